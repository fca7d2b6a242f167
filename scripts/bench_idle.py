"""What an idle coordinator costs, and the latencies its reaper must keep; prints JSON.

Phases (``--phases``, all by default):

* ``idle``: ``Coordinator(workers=0)`` and ``Coordinator()`` (the default worker count) started
  in this process and left alone for ``--seconds``. Reported per wall second: the CPU of this
  process (every thread: the reaper is the only one awake, the main thread sleeps), the
  reaper thread's context switches (each one a wake-up) and rounds (``reaper_rounds``; null for
  a tree that does not count them), and the CPU and context
  switches of every worker process, all from /proc.
* ``steps``: where a round's time goes. With the default workers and the reaper held asleep,
  ``--rounds`` rounds are run by hand, each after a 20 ms sleep as the reaper's short round had
  it (so caches are as cold), timing every step of ``Coordinator._reap_round`` (named by the
  source line it stopped at) in thread CPU time, plus the name watch's check before it.
* ``latency``: with the default workers, each repeated ``--repeats`` times after the coordinator
  sat idle for ``--settle`` seconds (so that a reaper that sleeps longer when idle is asleep):

  - ``reclaim_ms``: a superseded generation pinned by a context of a reader of this process; from
    the moment that context is dropped to the moment the coordinator freed the generation;
  - ``replace_ms``: a worker SIGKILLed; to its death handled (``death_ms``) and to its
    replacement attached and serving (``replace_ms``);
  - ``deadline_ms``: ``time.sleep(30)`` submitted with ``job_timeout``; from submission to the
    future failing with JobTimeout, minus the job_timeout (so: how late the deadline was enforced,
    plus the submission and start of the job).

CPU per wall second is the figure to compare; latencies move with the load of this shared
machine, so each is given as min / median / max of its repeats.
"""

from __future__ import annotations

import gc
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402

import shmpool  # noqa: E402
from shmpool.coordinator import Coordinator  # noqa: E402
from shmpool.errors import JobTimeout  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _switches(status_path: str) -> int:
    """voluntary + nonvoluntary context switches of one thread (/proc/.../status)."""
    total = 0
    with open(status_path, encoding="ascii") as fh:
        for line in fh:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (every thread), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _process_switches(pid: int) -> int:
    return sum(_switches(f"/proc/{pid}/task/{tid}/status") for tid in os.listdir(f"/proc/{pid}/task"))


def _reaper_tid(name: str) -> int:
    for thread in threading.enumerate():
        if thread.name == f"shmpool-{name}-reaper" and thread.native_id is not None:
            return thread.native_id
    raise RuntimeError(f"no reaper thread for {name!r}")


def idle_phase(workers: int | None, seconds: float) -> dict[str, Any]:
    name = benchlib.instance_name("bench-idle")
    with Coordinator(name, workers=workers) as coord:
        time.sleep(0.5)  # start-up settles: workers attached, first rounds done
        tid = _reaper_tid(name)
        pids = coord._pool.pids() if coord._pool is not None else []
        gc.collect()
        wall0, cpu0 = time.monotonic(), time.process_time()
        reaper0 = _switches(f"/proc/self/task/{tid}/status")
        rounds0 = getattr(coord, "reaper_rounds", None)  # None on main before idlecoord
        workers0 = {pid: (_process_cpu(pid), _process_switches(pid)) for pid in pids}
        time.sleep(seconds)
        wall = time.monotonic() - wall0
        cpu = time.process_time() - cpu0
        reaper = _switches(f"/proc/self/task/{tid}/status") - reaper0
        rounds = None if rounds0 is None else coord.reaper_rounds - rounds0
        worker_cpu = sum(_process_cpu(pid) - c for pid, (c, _) in workers0.items())
        worker_switches = sum(_process_switches(pid) - s for pid, (_, s) in workers0.items())
        worker_count = coord.worker_count if coord._pool is not None else 0
    return {"workers": worker_count, "seconds": round(wall, 3),
            "coordinator_cpu_ms_per_s": round(cpu / wall * 1e3, 3),
            "reaper_wakeups_per_s": round(reaper / wall, 2),
            "reaper_rounds_per_s": None if rounds is None else round(rounds / wall, 2),
            "workers_cpu_ms_per_s": round(worker_cpu / wall * 1e3, 3),
            "workers_wakeups_per_s": round(worker_switches / wall, 2)}


_NOT_A_STEP = ("#", "try", "except", "if ", "for ", "while ", "logger", "clock.heal", "clock.sweep", '"',
               "pool, board", "def ", "One ", "swallowed")


def _step_name(source: str, after: int, upto: int) -> str:
    """The statements between two yields of _reap_round (an ``if`` skipped at run time may add one
    that did not run: read the numbers with the source at hand)."""
    import linecache

    found = []
    for line in range(upto - 1, after, -1):
        text = linecache.getline(source, line).strip()
        if text.startswith("yield"):
            break
        if text and not text.startswith(_NOT_A_STEP):
            found.append(text.split("  #")[0])
    return "; ".join(reversed(found)) or f"line {upto}"


def steps_phase(rounds: int) -> dict[str, Any]:
    import inspect

    from shmpool.coordinator import coordinator as coordinator_module

    try:  # this branch's reaper sleeps when idle: hold it asleep; main's runs beside the bench
        from shmpool.coordinator import reaper_sleep
    except ImportError:
        clock_type: Any = coordinator_module._ReapClock
    else:
        reaper_sleep.IDLE_TICK = coordinator_module.DEAD_SWEEP_INTERVAL = 3600.0
        clock_type = reaper_sleep.ReapClock
    name = benchlib.instance_name("bench-idle")
    cpu: dict[str, list[float]] = {}
    source = inspect.getsourcefile(coordinator_module)
    with Coordinator(name) as coord:
        time.sleep(1.0)
        inst, publisher, watch = coord._inst, coord._publisher, coord._name_watch
        assert inst is not None and publisher is not None and watch is not None
        clock = clock_type(0.0, 0.0)  # every clocked step due: each round runs them all
        for _ in range(rounds):
            time.sleep(0.02)  # RECLAIM_INTERVAL
            clock.heal = clock.sweep = 0.0
            t0 = time.thread_time()
            watch.check()
            cpu.setdefault("watch.check()", []).append(time.thread_time() - t0)
            steps = coord._reap_round(inst, publisher, clock)
            previous = steps.gi_code.co_firstlineno
            while True:
                t0 = time.thread_time()
                try:
                    next(steps)
                except StopIteration:
                    label = "publisher.registry.reap_dead() (the round's end)"
                    done = True
                else:
                    frame = steps.gi_frame
                    line = frame.f_lineno if frame is not None else 0
                    label = _step_name(source or "", previous, line)
                    previous = line
                    done = False
                cpu.setdefault(label, []).append(time.thread_time() - t0)
                if done:
                    break
    per_step = {label: round(statistics.median(v) * 1e6, 1) for label, v in cpu.items()}
    return {"rounds": rounds, "median_thread_cpu_us": per_step,
            "round_total_us": round(sum(per_step.values()), 1)}


def _until(predicate: Any, limit: float = 30.0) -> float:
    """Poll ``predicate`` every 0.2 ms; the monotonic time it first held (RuntimeError after ``limit``)."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("condition not met within the bench's hang limit")
        time.sleep(0.0002)
    return time.monotonic()


def _summary(samples: list[float]) -> dict[str, float]:
    return {"min": round(min(samples), 2), "median": round(statistics.median(samples), 2),
            "max": round(max(samples), 2), "n": len(samples)}


def _publish(coord: Coordinator, dimension_id: int, payload: bytes) -> int:
    proto = coord.create_proto_dimension(dimension_id, "bench")
    proto.add_layer(1, payload)
    return coord.crystallize(dimension_id)


def latency_phase(repeats: int, settle: float, job_timeout: float) -> dict[str, Any]:
    name = benchlib.instance_name("bench-idle")
    reclaim, death, replace, late = [], [], [], []
    with Coordinator(name, job_modules=["time"]) as coord, shmpool.connect(name) as client:
        publisher, pool, board = coord._publisher, coord._pool, coord._board
        assert publisher is not None and pool is not None and board is not None
        reader = coord.reader()
        for i in range(repeats):
            _publish(coord, 1, b"a" * 4096)
            ctx = reader.load_layer_context(1, 1)  # pins this generation while it lives
            _publish(coord, 1, b"b" * 4096)
            time.sleep(settle)
            assert publisher.superseded, "the pinned generation was freed under its context"
            del ctx
            t0 = time.monotonic()
            reader.drop_stale()  # what a reader's next lookup does: lets go of the old mapping
            reclaim.append((_until(lambda: not publisher.superseded) - t0) * 1e3)

            time.sleep(settle)
            victim = pool.pids()[0]
            deaths, started = len(pool.deaths), board.workers_started()
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            death.append((_until(lambda: len(pool.deaths) > deaths) - t0) * 1e3)
            replace.append((_until(lambda: board.workers_started() > started) - t0) * 1e3)

            _until(lambda: len(pool.pids()) == coord.worker_count)
            time.sleep(settle)
            t0 = time.monotonic()
            future = client.submit(time.sleep, 30, job_timeout=job_timeout)
            try:
                future.result(30)
            except JobTimeout:
                late.append((time.monotonic() - t0 - job_timeout) * 1e3)
            else:
                raise RuntimeError("the job outlived its job_timeout")
            _until(lambda: len(pool.pids()) == coord.worker_count and board.counts()["running"] == 0)
    return {"repeats": repeats, "settle_s": settle, "job_timeout_s": job_timeout,
            "reclaim_ms": _summary(reclaim), "death_ms": _summary(death), "replace_ms": _summary(replace),
            "deadline_ms": _summary(late)}


def main() -> None:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--phases", default="idle,steps,latency")
    parser.add_argument("--rounds", type=int, default=50, help="rounds timed step by step")
    parser.add_argument("--seconds", type=float, default=10.0, help="idle window per coordinator")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--settle", type=float, default=1.5, help="idle seconds before each latency sample")
    parser.add_argument("--job-timeout", type=float, default=0.2)
    args = parser.parse_args()
    benchlib.quiet_logging()
    benchlib.raise_on_sigterm()
    phases = set(args.phases.split(","))
    out: dict[str, Any] = {"loadavg_at_start": os.getloadavg()}
    try:
        if "idle" in phases:
            out["idle"] = [idle_phase(0, args.seconds), idle_phase(None, args.seconds)]
        if "steps" in phases:
            out["steps"] = steps_phase(args.rounds)
        if "latency" in phases:
            out["latency"] = latency_phase(args.repeats, args.settle, args.job_timeout)
    finally:
        out["leftovers"] = benchlib.shm_leftovers()
    out["loadavg_at_end"] = os.getloadavg()
    benchlib.write_result("bench_idle", out, args.out_dir, save=not args.no_save)


if __name__ == "__main__":
    main()
