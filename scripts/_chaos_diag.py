"""Chaos campaigns: clients and workers SIGKILLed at random, a soak, fork, removed names; prints JSON.

Four campaigns (``--campaign kills,soak,fork,names`` or ``all``, any comma-separated subset). The
first two run on their own coordinator with 2 workers and a small board (``--slots``, default 8),
each ending with the same verdict on the board:

* ``kills``: victim client processes with jobs in flight are SIGKILLed at random moments
  (``--client-kills``), and workers are SIGKILLed while they run a job (``--worker-kills``),
  both at once, while live client processes keep submitting ``lookup`` / ``load_contexts`` and
  checking every answer. A victim keeps slow and fast jobs in flight, so a kill finds its slots
  queued, running, finished, half-consumed, or finds it waiting for a slot or inside the lock.
* ``soak``: ``--soak-clients`` client processes submit and check jobs for ``--soak-seconds``
  while the coordinator crystallizes a new generation of a dimension every
  ``--crystallize-every`` seconds (each layer names its round, and a reader recomputes the exact
  bytes, so a torn or mixed layer is caught) and SIGKILLs a worker every ``--kill-every`` seconds.

Afterwards, in both: every future of a live client completed (``lost``: not answered within
``--lost-after`` seconds), a fresh client gets all slots in flight at once within 1 s, the board
counters balance (submitted == completed + failed + cancelled), every slot is free and on the free
stack, and nothing of the instance is left in /dev/shm after stop. A job that killed two workers
fails with WorkerCrashed by design: that is counted, not held against the board; any other failure
type is. Exit status 1 if any check fails.

Two more campaigns hunt wrong bytes and silent failures rather than lost jobs:

* ``fork`` (scripts/_chaos_fork.py): processes holding a Reader, a context and a Client fork
  children under a publish loop that reclaims generations every few milliseconds, with the parent
  staying alive or exiting; a wrong byte, a wrong result or an untyped error in a child, or any
  effect on the parent, fails it. shmpool may refuse an inherited object with a typed error.
* ``names`` (scripts/_chaos_names.py): the /dev/shm names of a serving ``shmpool serve`` are
  deleted (all, then only the semaphores), as systemd-logind's RemoveIPC=yes does; the
  coordinator must stop within seconds with an ERROR naming the cause, and nothing may be left.

Victim and client processes come from a fork server that has imported shmpool already (a fresh
interpreter costs 0.3-0.5 s on a 2-core machine, too much for 60 victims); the slow job lives in
scripts/_chaos_jobs.py, which the workers may run (``job_modules=["_chaos_jobs"]``).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, str(SCRIPTS.parent))

import benchlib  # noqa: E402
from _chaos_clients import CHAOS_DIMENSION, CHAOS_LAYERS, chaos_layer, live_client, victim  # noqa: E402
from _chaos_fork import campaign_fork  # noqa: E402
from _chaos_names import campaign_names  # noqa: E402

import shmpool  # noqa: E402
from shmpool.coordinator import Coordinator  # noqa: E402
from shmpool.tools.stress import leak_check  # noqa: E402
from shmpool.jobs.jobs_layout import CC, JW, SC, SlotState  # noqa: E402
from shmpool.substrate.names import list_objects  # noqa: E402

PREFIX = "chaos"
WORKERS = 2
MAX_CLIENTS = 16
HELD_JOB = "_chaos_jobs:held"  # holds its slot until released: a fresh client's jobs are all in flight at once
ALL_SLOTS_WAIT = 10.0    # a lost slot makes the last submit wait this long, then fail (bounds a failure only)
TOLERATED_FAILURES = {"WorkerCrashed"}  # a job that killed MAX_ATTEMPTS workers fails, by design
SETTLE = 30.0            # seconds the board may take to come to rest (a hang catcher: it breaks at rest)
VICTIM_DELAY = 0.05      # a victim is killed up to this long after its jobs are submitted
WORKER_KILL_GAP = 0.2    # and a worker up to this long after the previous worker kill
SOAK_KILL_PATIENCE = 0.5  # the soak waits this long for a worker caught mid-job


# --------------------------------------------------------------------- shared pieces

def _context():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["shmpool", "shmpool.jobs.client", "_chaos_clients", "_chaos_fork"])
    return ctx


def _coordinator(name: str, slots: int) -> Coordinator:
    return Coordinator(name, data_dir=shmpool.SAMPLE, workers=WORKERS, job_slots=slots, max_clients=MAX_CLIENTS,
                       job_modules=["_chaos_jobs"])


def _start_clients(ctx, name: str, count: int, threads: int, seed: int, stop, results, lost_after: float):
    procs = [ctx.Process(target=live_client, args=(name, threads, seed + i, stop, results, lost_after),
                         name=f"chaos-client-{i}", daemon=True) for i in range(count)]
    for p in procs:
        p.start()
    ready = 0
    deadline = time.monotonic() + 60
    while ready < count:
        try:
            kind, pid, detail = results.get(timeout=0.5)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"live clients not ready: {[(p.pid, p.exitcode) for p in procs]}") from None
            continue
        if kind == "fatal":
            raise RuntimeError(f"live client {pid} could not connect: {detail}")
        ready += 1
    return procs


def _collect(results, procs, timeout: float) -> dict:
    """Sum of the live clients' reports; a client that never reports is a failure of the run."""
    totals: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    examples: list[str] = []
    got = 0
    deadline = time.monotonic() + timeout
    while got < len(procs):
        try:
            kind, _pid, detail = results.get(timeout=0.5)
        except queue.Empty:
            if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError(f"live clients did not report: {[(p.pid, p.exitcode) for p in procs]}") from None
            continue
        if kind != "result":
            continue
        got += 1
        failures.update(detail.pop("failures"))
        examples += detail.pop("examples")
        totals.update(detail)
    out = {k: totals[k] for k in ("futures", "completed", "ok", "lost", "submit_timeouts", "torn", "wrong",
                                  "regressions")}
    out["failures"] = dict(failures)
    out["unexpected_failures"] = sum(n for kind, n in failures.items() if kind not in TOLERATED_FAILURES)
    out["examples"] = examples[:10]
    return out


def _reap(procs) -> None:
    for p in procs:
        p.join(10)
        if p.exitcode is None:
            p.kill()
            p.join(5)


def _all_slots_at_once(name: str, slots: int, lost_after: float) -> dict:
    """A fresh client submits ``slots`` jobs that hold their slots until released: all must be in flight.

    No job can end before the release, so a slot the campaign lost makes the last submit time out
    however slow the machine: the check is a count, not a clock (``submit_seconds`` is reported).
    """
    with shmpool.connect(name, timeout=lost_after) as client, tempfile.TemporaryDirectory() as folder:
        release = os.path.join(folder, "release")
        futures, error = [], None
        t0 = time.monotonic()
        try:
            for i in range(slots):
                futures.append(client.submit(HELD_JOB, release, i, timeout=ALL_SLOTS_WAIT))
        except TimeoutError as exc:
            error = str(exc)
        finally:
            took = time.monotonic() - t0
            open(release, "wb").close()
        try:
            answers = [f.result(lost_after) for f in futures]
        except Exception as exc:  # noqa: BLE001 - reported, and the check below fails
            answers, error = None, f"{type(exc).__name__}: {exc}"
    return {"slots_in_flight": len(futures), "submit_seconds": round(took, 4),
            "all_in_flight_at_once": len(futures) == slots,
            "results_ok": answers == list(range(slots)), "error": error}


def _board_state(coord: Coordinator, slots: int) -> dict:
    """The board once at rest: counters, slot states, free stack, wake-up semaphores."""
    board = coord._board
    t0 = time.monotonic()
    while time.monotonic() - t0 < SETTLE:
        c = board.counts()
        if c["free"] == slots and c["queued"] == 0 and c["running"] == 0:
            break
        time.sleep(0.01)
    settle = time.monotonic() - t0
    c = board.counts()
    v = board.v
    states = Counter(SlotState(int(s)).name for s in v.slots[:, SC.STATE].tolist())
    top = int(v.words[JW.FREE_TOP])
    return {
        "counts": c, "settle_s": round(settle, 3), "slot_states": dict(states),
        "free_slots": c["free"], "slots": slots,
        "free_stack_whole": 0 <= top <= slots and sorted(v.free[:top].tolist()) == list(range(slots)),
        "balanced": c["submitted"] == c["completed"] + c["failed"] + c["cancelled"],
        "free_waiters": int(v.words[JW.FREE_WAITERS]),
        # Futex sleeper counts, wake-ups only, never capacity (shmpool/jobs/jobboard.py): reported,
        # not judged (a process killed asleep leaves its count one high until its channel is swept).
        "queue_sleepers": int(v.words[JW.QUEUE_SLEEPERS]),
        "ring_sleepers": int(v.channels[:, CC.RING_SLEEPERS].sum()),
    }


def _board_checks(board: dict, fresh: dict) -> dict:
    return {
        "fresh_client_all_slots_at_once": fresh["all_in_flight_at_once"],
        "fresh_client_results": fresh["results_ok"],
        "free_slots_equal_slots": board["free_slots"] == board["slots"],
        "every_slot_free": board["slot_states"] == {"FREE": board["slots"]},
        "free_stack_whole": board["free_stack_whole"],
        "counters_balanced": board["balanced"],
        "no_free_waiters_left": board["free_waiters"] == 0,
    }


def _client_checks(live: dict) -> dict:
    return {
        "every_future_completed": live["lost"] == 0 and live["futures"] == live["completed"],
        "no_submit_timeouts": live["submit_timeouts"] == 0,
        "no_torn_reads": live["torn"] == 0,
        "no_wrong_results": live["wrong"] == 0,
        "no_generation_regressions": live["regressions"] == 0,
        "no_unexpected_failures": live["unexpected_failures"] == 0,
        "clients_did_work": live["ok"] > 0,
    }


def _deaths(coord: Coordinator) -> dict:
    deaths = list(coord._pool.deaths)
    return {"seen": len(deaths), "with_jobs_in_flight": sum(1 for d in deaths if d["requeued"] + d["failed"]),
            "requeued": sum(d["requeued"] for d in deaths), "failed": sum(d["failed"] for d in deaths),
            "by_cause": dict(Counter(d["meaning"] for d in deaths))}


def _wait_deaths(coord: Coordinator, expected: int, patience: float = 10.0) -> None:
    deadline = time.monotonic() + patience
    while len(coord._pool.deaths) < expected and time.monotonic() < deadline:
        time.sleep(0.01)


def _ms(samples_ms: list[float]) -> dict:
    """benchlib.percentiles of millisecond samples, in milliseconds (it turns ns into µs)."""
    summary = benchlib.percentiles([x * 1e3 for x in samples_ms])
    return {k.replace("_us", "_ms"): v for k, v in summary.items()}


# --------------------------------------------------------------------- campaign 1: random kills

def _stopped(pid: int) -> bool | None:
    """Whether every thread of ``pid`` is stopped (a group stop reaches each one in turn); None if gone."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[1].split()[0] not in (b"T", b"t"):
                    return False
    except FileNotFoundError:
        return None
    return True


def _stop_holding_slots(pid: int, board, rng: random.Random, patience: float = 2.0) -> tuple[list[str], int]:
    """SIGSTOP the victim where it is, at a moment it holds a slot; (its slots' states, retries).

    Stopped, it can free nothing (its completion thread is frozen too) and, being alive, the
    dead-client sweep leaves it alone, so the states read are what the SIGKILL will interrupt.
    A victim between its last answer and its next submission holds no slot: let it run a
    little and stop it again.
    """
    deadline = time.monotonic() + patience
    retries = 0
    while True:
        os.kill(pid, signal.SIGSTOP)
        while (stopped := _stopped(pid)) is False:  # delivery is asynchronous: µs on an idle core
            time.sleep(0.0002)
        if stopped is None:  # it died on its own: the caller sees its exit code
            return [], retries
        slots = board.v.slots
        mine = slots[:, SC.CLIENT_PID] == pid
        states = [SlotState(int(s)).name for s in slots[mine, SC.STATE].tolist() if s != SlotState.FREE]
        if states or time.monotonic() > deadline:
            return states, retries
        retries += 1
        os.kill(pid, signal.SIGCONT)
        time.sleep(rng.uniform(0, 0.01))


def _kill_clients(ctx, name: str, board, count: int, jobs: int, rng: random.Random, end_by: float,
                  out: dict) -> None:
    held: Counter[str] = Counter()
    connect_ms: list[float] = []  # spawn -> connected
    ready_ms: list[float] = []    # spawn -> its jobs submitted
    done = sigkilled = in_flight = stop_retries = 0
    problems: list[str] = []
    while done < count and time.monotonic() < end_by:
        r, w = ctx.Pipe(duplex=False)
        t0 = time.perf_counter()
        p = ctx.Process(target=victim, args=(name, jobs, rng.randrange(1 << 30), w), daemon=True)
        p.start()
        w.close()
        marks = []
        for _ in "cr":
            if not r.poll(30):
                break
            r.recv_bytes()
            marks.append(time.perf_counter())
        r.close()
        if len(marks) < 2:
            problems.append(f"victim {p.pid} not ready within 30 s (exit code {p.exitcode})")
            p.kill()
            p.join(10)
            continue
        connect_ms.append((marks[0] - t0) * 1e3)
        ready_ms.append((marks[1] - t0) * 1e3)
        time.sleep(rng.uniform(0, VICTIM_DELAY))
        states, retries = _stop_holding_slots(p.pid, board, rng)
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        stop_retries += retries
        done += 1
        sigkilled += p.exitcode == -signal.SIGKILL
        in_flight += bool(states)
        held.update(states)
    out.update({"requested": count, "done": done, "died_by_sigkill": sigkilled, "with_jobs_in_flight": in_flight,
                "slot_states_at_kill": dict(held), "spawn_to_connected_ms": _ms(connect_ms),
                "spawn_to_jobs_submitted_ms": _ms(ready_ms), "stop_retries": stop_retries, "problems": problems})


def _busy_workers(coord: Coordinator, killed: set[int]) -> Counter:
    """Live workers running a job now: pid -> jobs RUNNING (read without the lock)."""
    slots = coord._board.v.slots
    busy = Counter(slots[slots[:, SC.STATE] == SlotState.RUNNING, SC.WORKER_PID].tolist())
    # pool.pids() rather than stats(): this polls every 2 ms and stats() lists every pin.
    # A killed worker stays in both (a zombie, still "running" its jobs) until the next
    # supervision round; killing it again would count a death that never happens.
    return Counter({pid: busy[pid] for pid in coord._pool.pids() if busy.get(pid) and pid not in killed})


def _kill_a_worker(coord: Coordinator, rng: random.Random, killed: set[int], patience: float) -> tuple[int, int] | None:
    """SIGKILL a worker that runs a job, waiting up to ``patience`` for one; (pid, jobs it ran) or None."""
    deadline = time.monotonic() + patience
    while True:
        busy = _busy_workers(coord, killed)
        if busy:
            pid = rng.choice(sorted(busy))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.add(pid)
            return pid, busy[pid]
        if time.monotonic() > deadline:
            return None
        time.sleep(0.002)


def _kill_workers(coord: Coordinator, count: int, rng: random.Random, end_by: float, out: dict) -> None:
    done = running = 0
    killed: set[int] = set()
    while done < count and time.monotonic() < end_by:
        hit = _kill_a_worker(coord, rng, killed, patience=max(0.0, end_by - time.monotonic()))
        if hit is None:
            break
        done += 1
        running += hit[1]
        time.sleep(rng.uniform(0, WORKER_KILL_GAP))
    out.update({"requested": count, "done": done, "running_jobs_seen_at_kill": running})


def campaign_kills(name: str, ctx, *, client_kills: int, worker_kills: int, slots: int, live_clients: int,
                   live_threads: int, victim_jobs: int, lost_after: float, max_seconds: float, seed: int) -> dict:
    rng = random.Random(seed)
    stop, results = ctx.Event(), ctx.Queue()
    clients_out: dict = {}
    workers_out: dict = {}
    procs: list = []
    t0 = time.monotonic()
    coord = _coordinator(name, slots)
    try:
        coord.start()
        procs = _start_clients(ctx, name, live_clients, live_threads, seed, stop, results, lost_after)
        end_by = time.monotonic() + max_seconds
        killers = [threading.Thread(target=_kill_clients, args=(ctx, name, coord._board, client_kills, victim_jobs,
                                                                random.Random(rng.random()), end_by, clients_out)),
                   threading.Thread(target=_kill_workers, args=(coord, worker_kills, random.Random(rng.random()),
                                                                end_by, workers_out))]
        for th in killers:
            th.start()
        for th in killers:
            th.join()
        kill_seconds = time.monotonic() - t0
        _wait_deaths(coord, workers_out["done"])
        stop.set()
        live = _collect(results, procs, lost_after + 30)
        fresh = _all_slots_at_once(name, slots, lost_after)
        board = _board_state(coord, slots)
        leak = leak_check(coord)  # spilled arguments of killed victims and workers included
        if leak["leaked_blocks"] > 0:
            import sys as _s
            allocs = coord.dump_state().get("allocations")
            _s.stderr.write("DIAG allocations at leak: " + repr(allocs)[:4000] + "\n")
            leak2 = leak_check(coord, patience=20.0)
            _s.stderr.write("DIAG after 20 s more: " + repr(leak2) + "\n")
            _s.stderr.write("DIAG allocations after: " + repr(coord.dump_state().get("allocations"))[:4000] + "\n")
        workers_out["deaths"] = _deaths(coord)
    finally:
        stop.set()
        _reap(procs)
        coord.stop()
    segments, semaphores = list_objects(name)
    checks = {
        "no_leaked_blocks": leak["leaked_blocks"] <= 0,
        "client_kills_done": clients_out["done"] == client_kills,
        "victims_died_by_sigkill": clients_out["died_by_sigkill"] == clients_out["done"],
        "victims_had_jobs_in_flight": clients_out["with_jobs_in_flight"] == clients_out["done"],
        "worker_kills_done": workers_out["done"] == worker_kills,
        "worker_deaths_noticed": workers_out["deaths"]["seen"] >= workers_out["done"],
        **_client_checks(live), **_board_checks(board, fresh),
        "nothing_left_in_dev_shm": (segments, semaphores) == ([], []),
    }
    return {
        "ok": all(checks.values()), "checks": checks, "seconds": round(time.monotonic() - t0, 2),
        "kill_phase_seconds": round(kill_seconds, 2),
        "client_kills": clients_out, "worker_kills": workers_out, "live_clients": live,
        "fresh_client": fresh, "board": board, "memory": leak,
        "leftovers_in_dev_shm": segments + semaphores,
    }


# --------------------------------------------------------------------- campaign 2: soak

def _publish(coord: Coordinator, round_: int) -> int:
    proto = coord.create_proto_dimension(CHAOS_DIMENSION, "chaos")
    for layer in range(1, CHAOS_LAYERS + 1):
        proto.add_layer(layer, chaos_layer(layer, round_), frequency=layer / CHAOS_LAYERS, keywords=("chaos",))
    return coord.crystallize(CHAOS_DIMENSION)


def campaign_soak(name: str, ctx, *, seconds: float, clients: int, threads: int, slots: int,
                  crystallize_every: float, kill_every: float, lost_after: float, seed: int) -> dict:
    rng = random.Random(seed)
    stop, results = ctx.Event(), ctx.Queue()
    procs: list = []
    generations: list[int] = []
    crystallize_ms: list[int] = []
    kills = 0
    killed: set[int] = set()
    t0 = time.monotonic()
    coord = _coordinator(name, slots)
    try:
        coord.start()
        generations.append(_publish(coord, 0))
        used_start = coord.stats()["used_bytes"]
        procs = _start_clients(ctx, name, clients, threads, seed, stop, results, lost_after)
        start = time.monotonic()
        end = start + seconds
        next_gen, next_kill = start + crystallize_every, start + kill_every
        while (now := time.monotonic()) < end:
            if now >= next_gen:
                c0 = time.perf_counter_ns()
                generations.append(_publish(coord, len(generations)))
                crystallize_ms.append(time.perf_counter_ns() - c0)
                next_gen = max(next_gen + crystallize_every, time.monotonic())
            if now >= next_kill:
                # Mid-job if one comes along soon (a job is ~0.1 ms of a ~0.4 ms round trip,
                # so a blind kill mostly finds a worker idle), else whichever.
                if _kill_a_worker(coord, rng, killed, patience=SOAK_KILL_PATIENCE) is None:
                    pid = rng.choice([p for p in coord._pool.pids() if p not in killed] or [0])
                    if pid:
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
                kills += 1
                next_kill += kill_every
            time.sleep(max(0.0, min(next_gen, next_kill, end) - time.monotonic()))
        soak_seconds = time.monotonic() - start
        _wait_deaths(coord, kills)
        stop.set()
        live = _collect(results, procs, lost_after + 30)
        leak = leak_check(coord)
        fresh = _all_slots_at_once(name, slots, lost_after)
        board = _board_state(coord, slots)
        deaths = _deaths(coord)
    finally:
        stop.set()
        _reap(procs)
        coord.stop()
    segments, semaphores = list_objects(name)
    expected_kills = math.ceil(seconds / kill_every) - 1  # at kill_every, 2 * kill_every, ... before the end
    checks = {
        "worker_kills_done": kills == expected_kills,
        "worker_deaths_noticed": deaths["seen"] >= kills,
        **_client_checks(live), **_board_checks(board, fresh),
        "no_leaked_blocks": leak["leaked_blocks"] <= 0,
        "nothing_left_in_dev_shm": (segments, semaphores) == ([], []),
    }
    ops = live["ok"]
    return {
        "ok": all(checks.values()), "checks": checks, "seconds": round(time.monotonic() - t0, 2),
        "soak_seconds": round(soak_seconds, 2),
        "operations": ops, "operations_per_s": round(ops / soak_seconds, 1),
        "failures": live["failures"], "torn_reads": live["torn"], "lost_jobs": live["lost"],
        "live_clients": live,
        "generations_published": len(generations), "last_generation": generations[-1],
        "crystallize_ms": _ms([x / 1e6 for x in crystallize_ms]),
        "worker_kills": kills, "worker_kills_expected": expected_kills, "worker_deaths": deaths,
        "memory": {"used_bytes_start": used_start, "used_bytes_end": leak["used_bytes"], **leak},
        "board": board, "board_free_vs_slots": f"{board['free_slots']}/{slots}", "fresh_client": fresh,
        "leftovers_in_dev_shm": segments + semaphores,
    }


# --------------------------------------------------------------------- main

CAMPAIGNS = ("kills", "soak", "fork", "names")


def _campaigns(text: str) -> tuple[str, ...]:
    """'all' or a comma-separated subset of CAMPAIGNS, in the order they run."""
    import argparse

    asked = {c.strip() for c in text.split(",") if c.strip()}
    if asked == {"all"}:
        return CAMPAIGNS
    unknown = asked - set(CAMPAIGNS)
    if unknown or not asked:
        raise argparse.ArgumentTypeError(f"unknown campaign {', '.join(sorted(unknown)) or text!r}: "
                                         f"choose from {', '.join(CAMPAIGNS)} or all")
    return tuple(c for c in CAMPAIGNS if c in asked)


def main(argv=None) -> int:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="write the JSON to this file (default bench-results/chaos.json)")
    parser.add_argument("--campaign", type=_campaigns, default=CAMPAIGNS,
                        help=f"comma-separated, from {', '.join(CAMPAIGNS)}; or all (the default)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 6 client kills, 6 worker kills, a 3 s soak (explicit counts win)")
    parser.add_argument("--name", default=None, help="instance name (default chaos-<random>); both campaigns "
                                                     "use it in turn")
    parser.add_argument("--slots", type=int, default=8, help="job slots of the board (default 8)")
    parser.add_argument("--client-kills", type=int, default=None, help="victim clients SIGKILLed (default 60)")
    parser.add_argument("--worker-kills", type=int, default=None, help="workers SIGKILLed mid-job (default 60)")
    parser.add_argument("--live-clients", type=int, default=2, help="live client processes of the kill campaign")
    parser.add_argument("--live-threads", type=int, default=3, help="submitting threads per live client")
    parser.add_argument("--victim-jobs", type=int, default=None,
                        help="jobs each victim keeps in flight (default: half the slots)")
    parser.add_argument("--max-kill-seconds", type=float, default=300.0,
                        help="the kill campaign stops killing after this long, done or not (default 300)")
    parser.add_argument("--soak-seconds", type=float, default=None, help="length of the soak (default 60)")
    parser.add_argument("--soak-clients", type=int, default=4, help="client processes of the soak (default 4)")
    parser.add_argument("--soak-threads", type=int, default=2, help="submitting threads per soak client")
    parser.add_argument("--crystallize-every", type=float, default=0.2)
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between worker kills in the soak")
    parser.add_argument("--lost-after", type=float, default=30.0,
                        help="a future not answered within this many seconds is lost (default 30)")
    parser.add_argument("--fork-holders", type=int, default=2,
                        help="processes of each fork mode (parent alive, parent exiting) that fork (default 2)")
    parser.add_argument("--fork-children", type=int, default=2, help="children each of them forks (default 2)")
    parser.add_argument("--fork-seconds", type=float, default=None,
                        help="how long the children use what they inherited (default 8; --quick 3)")
    parser.add_argument("--publish-every", type=float, default=0.01,
                        help="seconds between generations published during the fork campaign (default 0.01)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quick = args.quick
    client_kills = args.client_kills if args.client_kills is not None else (6 if quick else 60)
    worker_kills = args.worker_kills if args.worker_kills is not None else (6 if quick else 60)
    soak_seconds = args.soak_seconds if args.soak_seconds is not None else (3.0 if quick else 60.0)
    fork_seconds = args.fork_seconds if args.fork_seconds is not None else (3.0 if quick else 8.0)
    victim_jobs = args.victim_jobs if args.victim_jobs is not None else max(1, args.slots // 2)
    if min(args.slots, args.live_clients, args.live_threads, args.soak_clients, args.soak_threads, victim_jobs) < 1:
        parser.error("--slots, --live-clients, --live-threads, --soak-clients, --soak-threads and --victim-jobs "
                     "must be at least 1")
    if min(args.fork_holders, args.fork_children) < 1 or fork_seconds <= 0 or args.publish_every <= 0:
        parser.error("--fork-holders and --fork-children must be at least 1; --fork-seconds, --publish-every > 0")
    if min(client_kills, worker_kills) < 0 or soak_seconds <= 0 or args.crystallize_every <= 0 or args.kill_every <= 0:
        parser.error("kill counts must be >= 0; --soak-seconds, --crystallize-every, --kill-every must be > 0")
    name = args.name or benchlib.instance_name(PREFIX)
    benchlib.raise_on_sigterm()
    benchlib.quiet_logging()
    parameters = {
        "campaign": ",".join(args.campaign), "quick": quick, "name": name, "slots": args.slots, "workers": WORKERS,
        "client_kills": client_kills, "worker_kills": worker_kills, "live_clients": args.live_clients,
        "live_threads": args.live_threads, "victim_jobs": victim_jobs, "soak_seconds": soak_seconds,
        "soak_clients": args.soak_clients, "soak_threads": args.soak_threads,
        "crystallize_every_s": args.crystallize_every, "kill_every_s": args.kill_every,
        "lost_after_s": args.lost_after, "seed": args.seed, "fork_holders": args.fork_holders,
        "fork_children": args.fork_children, "fork_seconds": fork_seconds, "publish_every_s": args.publish_every,
    }
    campaigns: dict = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        # Lock files and the sample; workers, the fork server and its children inherit both.
        os.environ["SHMPOOL_RUNTIME_DIR"] = tmp
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")]))
        ctx = _context()
        if "kills" in args.campaign:
            campaigns["kills"] = campaign_kills(
                name, ctx, client_kills=client_kills, worker_kills=worker_kills, slots=args.slots,
                live_clients=args.live_clients, live_threads=args.live_threads, victim_jobs=victim_jobs,
                lost_after=args.lost_after, max_seconds=args.max_kill_seconds, seed=args.seed)
        if "soak" in args.campaign:
            campaigns["soak"] = campaign_soak(
                name, ctx, seconds=soak_seconds, clients=args.soak_clients, threads=args.soak_threads,
                slots=args.slots, crystallize_every=args.crystallize_every, kill_every=args.kill_every,
                lost_after=args.lost_after, seed=args.seed)
        if "fork" in args.campaign:
            campaigns["fork"] = campaign_fork(
                name, ctx, coordinator=lambda: _coordinator(name, args.slots), publish=_publish,
                holders=args.fork_holders, children=args.fork_children, seconds=fork_seconds,
                publish_every=args.publish_every, list_objects=list_objects)
        if "names" in args.campaign:
            campaigns["names"] = campaign_names(
                name, make_coordinator=lambda n: Coordinator(n, workers=0), list_objects=list_objects)
    failed = [f"{c}.{check}" for c, result in campaigns.items() for check, ok in result["checks"].items() if not ok]
    payload = {"ok": not failed, "failed_checks": failed, "seconds": round(time.monotonic() - t0, 2),
               "parameters": parameters, **campaigns}
    benchlib.write_result("chaos", payload, args.out_dir, save=not args.no_save, out_file=args.out)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
