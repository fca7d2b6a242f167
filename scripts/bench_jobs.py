"""Job round trips: shmpool worker pool vs ProcessPoolExecutor vs Manager().dict(), same run; prints JSON.

The job is the same everywhere: fetch one layer of the 14-dimension sample by (dimension, layer),
random over the sample. Latencies are in microseconds (keys ``_us``), from the client thread's
call to its result.

* ``shmpool_pool``: ``Client.lookup`` through ``shmpool.connect`` (the built-in ``lookup`` job: a
  worker resolves it; the result comes back as a reference into shared memory, resolved in the
  client without a copy). ``board_mean_us`` is the board's own latency (submitted -> response
  stored by the worker), from the coordinator's job latency histogram, so the rest of the round
  trip is the client's completion path.
* ``process_pool_executor``: ``submit(get_layer, dim, layer).result()`` on a spawn-context
  ``ProcessPoolExecutor`` whose workers attach with ``shmpool.attach`` in their initializer and
  return the layer's bytes (pickled back, as ProcessPoolExecutor does).
* ``manager_dict``: ``d[(dim, layer)]`` on a ``multiprocessing.Manager().dict()`` holding every
  layer's bytes (one round trip to the manager process per get).
* ``direct_reader_no_job``: ``Reader.load_layer_context`` in the client process: what a process
  that can attach pays without any job at all (a reference, not a contender).

All pools have the same number of worker processes (default: CPU count). Each system runs with
one client thread, then with many (default 128) threads in one process; with
``--client-processes P`` also with the same number of threads spread over P client processes
(shmpool pool and Manager dict; rows named ``PxT``).

Section ``ipc`` (``ipc_rounds.py``, peers in ``ipc_peers.py`` and ``ipc_shmpool.py``): the bare job
path, a tiny ``x -> x + 1`` job, one client process and one worker, shmpool's ``Client.call``,
``submit().result()`` and ``map`` against multiprocessing.Pipe, raw POSIX semaphores, ZeroMQ,
faster-fifo, multiprocessing.Queue, mpire, ProcessPoolExecutor and iceoryx2, and the floor rows
(a futex ping-pong through shmpool's compiled core, the very wait/wake the board uses, and a
one-byte os.pipe), interleaved in ``--rounds`` rounds; medians of rounds and per-round ratios to
multiprocessing.Pipe. A peer that is not installed, or fails, is recorded with the reason.
``ipc_goals`` states issue 25's goals as ratios of those medians, each marked met or not.
``--markdown FILE`` writes its table.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import benchlib  # noqa: E402
import ipc_rounds  # noqa: E402

# shmpool is imported where it is used, not here: every process that multiprocessing spawns (the
# ipc section's client processes and the peers' workers) imports this file again as its __main__,
# and most of them never use shmpool (~0.2 s of CPU each for nothing).

PREFIX = "bench-jobs"
TARGET_SPEEDUP = 5.0
TARGET_P99_US = 1000.0
WARMUP = 200
CHILD_TIMEOUT = 600.0
MARKDOWN = Path(__file__).resolve().parent.parent / "docs" / "results" / "bench_jobs_table.md"
# The ipc section's sizes: about 10 s a round on 2 cores, so 9 rounds stay near a minute and a half.
IPC_FULL = {"n_lat": 2000, "n_pipe": 4000, "window": 64, "warmup": 200}
IPC_QUICK = {"n_lat": 50, "n_pipe": 200, "window": 64, "warmup": 20}

_reader = None  # the ProcessPoolExecutor worker's reader, made by _attach


def _attach(name: str) -> None:
    import shmpool

    global _reader
    _reader = shmpool.attach(name)


def get_layer(dimension_id: int, layer_id: int) -> bytes:
    """The ProcessPoolExecutor job: the same lookup, returned as bytes."""
    return bytes(_reader.load_layer_context(dimension_id, layer_id).content)


# ----------------------------------------------------------------------------- the client side

def _run(call, keys, threads: int, per_thread: int, seed: int = 0, go=None) -> tuple[np.ndarray, int, int]:
    """``threads`` client threads each make ``per_thread`` calls; (latencies ns, start ns, end ns).

    Start and end are CLOCK_MONOTONIC (``time.monotonic_ns``), comparable across processes.
    ``go``, if given, is waited on once every thread is ready (a cross-process start line).
    """
    clock = benchlib.clock
    latencies = np.zeros((threads, per_thread), dtype=np.int64)
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def client(i: int) -> None:
        rng = random.Random(seed * 100_003 + i)
        picks = [rng.choice(keys) for _ in range(per_thread)]
        mine = [0] * per_thread
        barrier.wait()
        try:
            for j, (dim, lid) in enumerate(picks):
                t0 = clock()
                call(dim, lid)
                mine[j] = clock() - t0
        except BaseException as exc:  # re-raised in the calling thread below
            errors.append(exc)
        latencies[i] = mine

    pool = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    if go is not None:
        go.wait(CHILD_TIMEOUT)
    start = time.monotonic_ns()
    barrier.wait()
    for t in pool:
        t.join()
    end = time.monotonic_ns()
    if errors:
        raise errors[0]
    return latencies.ravel(), start, end


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process ``pid`` so far (Linux /proc), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _measured(call, keys, threads: int, per_thread: int, worker_pids=()) -> dict:
    """:func:`_run` in this process, summarised, with the CPU it cost per job: this (client) process's,
    and each of ``worker_pids``'s."""
    workers0 = [_cpu_seconds(pid) for pid in worker_pids]
    cpu0 = time.process_time()
    lat, start, end = _run(call, keys, threads, per_thread)
    cpu = time.process_time() - cpu0
    workers1 = [_cpu_seconds(pid) for pid in worker_pids]
    row = _summary(lat, start, end, threads)
    row["client_cpu_us_per_job"] = round(cpu / len(lat) * 1e6, 1)
    if worker_pids and None not in workers0 + workers1:
        row["worker_cpu_us_per_job"] = [round((b - a) / len(lat) * 1e6, 1) for a, b in zip(workers0, workers1)]
    return row


def _summary(latencies: np.ndarray, start: int, end: int, threads: int, processes: int = 1) -> dict:
    wall = (end - start) / 1e9
    rate = len(latencies) / wall
    return {**benchlib.percentiles(latencies), "jobs_per_s": round(rate), "threads": threads,
            "client_processes": processes,
            # Little's law: with `threads` calls always in flight, mean latency = threads / throughput.
            "littles_law_mean_us": round(threads / rate * 1e6, 1)}


def _system_call(system: str, name: str, shared):
    """(call, closer) for ``system`` in this process."""
    if system == "shmpool_pool":
        import shmpool

        client = shmpool.connect(name)
        return client.lookup, client.close
    if system == "manager_dict":
        return (lambda d, l: shared[(d, l)]), (lambda: None)
    raise ValueError(f"no multi-process client for {system!r}")


def _client_child(system: str, name: str, shared, keys, threads: int, per_thread: int, seed: int,
                  go, results) -> None:
    """A client process: connect, warm up, report ready, wait for ``go``, run, send latencies."""
    try:
        call, close = _system_call(system, name, shared)
        try:
            for dim, lid in keys[:WARMUP]:
                call(dim, lid)
            results.put(("ready", os.getpid()))
            lat, start, end = _run(call, keys, threads, per_thread, seed, go)
        finally:
            close()
        results.put(("done", (lat.tobytes(), start, end)))
    except BaseException as exc:
        results.put(("error", repr(exc)))
        raise


def _multi_process(system: str, name: str, shared, keys, processes: int, threads: int, per_thread: int) -> dict:
    ctx = mp.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    each = -(-threads // processes)
    procs = [ctx.Process(target=_client_child, name=f"bench-jobs-client-{i}",
                         args=(system, name, shared, keys, each, per_thread, 1 + i, go, results))
             for i in range(processes)]
    try:
        for p in procs:
            p.start()
        benchlib.collect(results, procs, processes, CHILD_TIMEOUT)
        go.set()
        done = benchlib.collect(results, procs, processes, CHILD_TIMEOUT)
    finally:
        for p in procs:
            p.join(10)
            if p.exitcode is None:
                p.terminate()
                p.join(5)
    lat = np.concatenate([np.frombuffer(raw, dtype=np.int64) for raw, _, _ in done])
    start, end = min(s for _, s, _ in done), max(e for _, _, e in done)
    return _summary(lat, start, end, each * processes, processes)


# ----------------------------------------------------------------------------- the systems

def _board_latency(coord) -> tuple[int, float]:
    h = coord.job_latency_histogram()
    return h["count"], h["sum_seconds"]


def _with_board_latency(coord, measure) -> dict:
    """``measure()``'s row plus the board's mean latency over the jobs it ran (submitted -> stored)."""
    count0, sum0 = _board_latency(coord)
    row = measure()
    count1, sum1 = _board_latency(coord)
    if count1 > count0:
        row["board_mean_us"] = round((sum1 - sum0) / (count1 - count0) * 1e6, 1)
    return row


def bench_shmpool(coord, keys, plan, multi) -> dict:
    import shmpool

    out = {}
    pids = coord.stats()["workers"]["pids"]
    with shmpool.connect(coord.name) as client:
        for dim, lid in keys[:WARMUP]:  # every worker maps its generations
            client.lookup(dim, lid)
        for threads, n in plan:
            out[str(threads)] = _with_board_latency(
                coord, lambda: _measured(client.lookup, keys, threads, n, pids))  # noqa: B023 (called at once)
    if multi:
        processes, threads, n = multi
        out[f"{processes}x{-(-threads // processes)}"] = _with_board_latency(
            coord, lambda: _multi_process("shmpool_pool", coord.name, None, keys, processes, threads, n))
    return out


def bench_process_pool(name: str, workers: int, keys, plan) -> dict:
    out = {}
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_attach,
                             initargs=(name,)) as ex:
        def call(d, l):
            return ex.submit(get_layer, d, l).result()

        for dim, lid in keys[:WARMUP]:
            call(dim, lid)
        for threads, n in plan:
            out[str(threads)] = _measured(call, keys, threads, n)
    return out


def bench_manager_dict(name: str, keys, plan, multi) -> dict:
    import shmpool

    out = {}
    with mp.get_context("spawn").Manager() as manager, shmpool.attach(name) as reader:
        shared = manager.dict({(d, l): bytes(reader.load_layer_context(d, l).content) for d, l in keys})

        def call(d, l):
            return shared[(d, l)]

        for dim, lid in keys[:WARMUP]:
            call(dim, lid)
        for threads, n in plan:
            out[str(threads)] = _measured(call, keys, threads, n)
        if multi:
            processes, threads, n = multi
            out[f"{processes}x{-(-threads // processes)}"] = _multi_process("manager_dict", name, shared, keys,
                                                                             processes, threads, n)
    return out


def bench_direct(name: str, keys, plan) -> dict:
    # No multi-process row: a few ms of lookups per process would measure the start-line skew.
    import shmpool

    out = {}
    with shmpool.attach(name) as reader:
        for dim, lid in keys:
            reader.load_layer_context(dim, lid)
        for threads, n in plan:
            out[str(threads)] = _measured(reader.load_layer_context, keys, threads, n)
    return out


# ----------------------------------------------------------------------------- main

FLOORS = ("futex ping-pong (shmpool core)", "os.pipe one byte", "posix_ipc semaphores + shared buffer")


def ipc_goals(ipc: dict) -> dict:
    """Issue 25's goals as ratios of the ipc section's medians (of rounds), each with its target
    and whether it is met; a goal whose rows were skipped is None."""
    systems = ipc.get("systems", {})

    def med(name: str, field: str):
        return systems.get(name, {}).get("median", {}).get(field)

    def ratio(a, b):
        return None if a is None or not b else round(a / b, 3)

    def cpu(name: str):
        c, w = med(name, "client_cpu_us_per_job"), med(name, "worker_cpu_us_per_job")
        return None if c is None or w is None else c + w

    call, pipe = "shmpool Client.call", "multiprocessing.Pipe"
    floors = [f for f in (med(n, "p50_us") for n in FLOORS) if f]
    rows = {
        "call_p50_vs_fastest_floor": (ratio(med(call, "p50_us"), min(floors) if floors else None), "<=", 1.5),
        "call_p50_vs_pipe": (ratio(med(call, "p50_us"), med(pipe, "p50_us")), "<=", 0.6),
        "call_p99_vs_pipe_p99": (ratio(med(call, "p99_us"), med(pipe, "p99_us")), "<=", 1.0),
        "ppe_p50_vs_call_p50": (ratio(med("ProcessPoolExecutor", "p50_us"), med(call, "p50_us")), ">=", 5.0),
        "call_cpu_per_job_vs_pipe": (ratio(cpu(call), cpu(pipe)), "<=", 0.5),
        "pipelined_submit_vs_faster_fifo": (ratio(med("shmpool Client.submit().result()", "pipelined_req_per_s"),
                                                  med("faster-fifo", "pipelined_req_per_s")), ">=", 2.0),
        "pipelined_submit_vs_iceoryx2_event": (
            ratio(med("shmpool Client.submit().result()", "pipelined_req_per_s"),
                  med("iceoryx2 request-response (event wait)", "pipelined_req_per_s")), ">=", 1.0),
        "low_latency_p50_vs_iceoryx2_spin": (ratio(med("shmpool low-latency client", "p50_us"),
                                                   med("iceoryx2 request-response (busy-spin)", "p50_us")), "<=", 1.2),
        "map_chunksize16_items_per_s": (med("shmpool Client.map", "map_items_per_s"), ">=", 1_000_000),
    }
    out = {}
    for key, (value, op, target) in rows.items():
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        out[key] = {"value": value, "target": f"{op} {target}", "met": met}
    return out


def goals_markdown(goals: dict) -> str:
    lines = ["", "Issue 25's goals (ratios of the medians above):", "", "| goal | value | target | met |",
             "|---|---:|---:|---|"]
    for key, g in goals.items():
        met = "—" if g["met"] is None else ("yes" if g["met"] else "**no**")
        value = "—" if g["value"] is None else f"{g['value']:,}"
        lines.append(f"| {key} | {value} | {g['target']} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import shmpool
    from shmpool.coordinator import Coordinator
    from shmpool.data.sample import build_sample

    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="write the JSON to this file (default bench-results/bench_jobs.json)")
    parser.add_argument("--quick", action="store_true", help="a few round trips of everything: a smoke test")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes of every pool (default: CPU count)")
    parser.add_argument("--clients", type=int, default=128, help="client threads of the concurrent run (default 128)")
    parser.add_argument("--round-trips", type=int, default=20_000,
                        help="round trips per measurement, split over the threads (default 20000)")
    parser.add_argument("--client-processes", type=int, default=4,
                        help="also spread --clients threads over this many client processes (default 4; 0: skip)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds of the ipc section (default 9; 2 with --quick)")
    parser.add_argument("--markdown", type=Path, nargs="?", const=MARKDOWN, default=None,
                        help=f"also write the ipc table as markdown to this file (default {MARKDOWN})")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.clients < 1:
        parser.error("--workers and --clients must be at least 1")
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 9)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    ipc_params = IPC_QUICK if args.quick else IPC_FULL
    if args.quick:
        plan, multi = [(1, 200), (8, 25)], None
    else:
        plan = [(1, max(200, args.round_trips // 4)), (args.clients, max(40, args.round_trips // args.clients))]
        multi = None
        if args.client_processes > 0:
            multi = (args.client_processes, args.clients, max(40, args.round_trips // args.clients))
    benchlib.raise_on_sigterm()
    benchlib.quiet_logging()
    name = benchlib.instance_name(PREFIX)
    leftovers: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        os.environ["SHMPOOL_RUNTIME_DIR"] = tmp  # lock files; workers and spawned clients inherit it
        data = Path(tmp) / "sample"
        build_sample(data)
        try:
            with Coordinator(name, data_dir=data, workers=args.workers) as coord:
                with shmpool.attach(name) as reader:
                    keys = [(d, lid) for d in reader.dimensions() for lid in reader.layer_ids(d)]
                    sizes = np.array([len(reader.load_layer_context(d, l).content) for d, l in keys])
                results = {
                    "shmpool_pool": bench_shmpool(coord, keys, plan, multi),
                    "process_pool_executor": bench_process_pool(name, args.workers, keys, plan),
                    "manager_dict": bench_manager_dict(name, keys, plan, multi),
                    "direct_reader_no_job": bench_direct(name, keys, plan),
                }
                jobs = coord.stats()["jobs"]
            iox_before = _iceoryx2_files()
            ipc = ipc_rounds.run(Path(tmp), rounds=rounds, **ipc_params)
            ipc["iceoryx2_files_removed"] = _remove_iceoryx2_files(_iceoryx2_files() - iox_before)
            ipc["iceoryx2_files_left_in_dev_shm"] = sorted(_iceoryx2_files() - iox_before)
        finally:
            leftovers = benchlib.shm_leftovers() + _ipc_leftovers()

    ratios = {}
    for threads, _ in plan:
        t = str(threads)
        ours, ppe, mgr = (results[k][t] for k in ("shmpool_pool", "process_pool_executor", "manager_dict"))
        ratios[t] = {"p50_speedup_vs_ppe": round(ppe["median_us"] / ours["median_us"], 2),
                     "p99_speedup_vs_ppe": round(ppe["p99_us"] / ours["p99_us"], 2),
                     "throughput_ratio_vs_ppe": round(ours["jobs_per_s"] / ppe["jobs_per_s"], 2),
                     "p50_speedup_vs_manager_dict": round(mgr["median_us"] / ours["median_us"], 2)}
    first, top = str(plan[0][0]), str(plan[-1][0])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    payload = {
        "config": {"workers": args.workers, "thread_counts": [t for t, _ in plan],
                   "round_trips_per_thread": [n for _, n in plan],
                   "client_processes": multi[0] if multi else 0, "quick": args.quick, "ipc_rounds": rounds},
        "layer_bytes": {"mean": round(float(sizes.mean())), "median": int(np.median(sizes)),
                        "max": int(sizes.max()), "layers": len(keys)},
        "notes": [
            f"{cores} usable cores shared by the client process, {args.workers} worker processes, the "
            "coordinator (its reaper wakes every 20 ms) and, in their turn, the ProcessPoolExecutor workers "
            "or the Manager process: round trips at 1 client are mostly process wake-ups (semaphore or "
            "pipe), not work.",
            "At N client threads in one process the GIL serialises the client side; latency there is "
            "queueing: mean latency = N / throughput (littles_law_mean_us). A p99 under 1 ms at 128 "
            "clients needs about 128,000 jobs/s.",
            "shmpool_pool returns a zero-copy reference; process_pool_executor and manager_dict return "
            "the layer's bytes (pickled), so they also pay a copy proportional to layer_bytes.",
            "manager_dict: each client thread's first get opens that thread's own connection to the manager "
            "(a new server thread) inside the timed calls; with 128 threads that is its p99.9 and max.",
            "process_pool_executor is measured with client threads in one process only: an executor "
            "cannot be shared across processes.",
            "client_cpu_us_per_job is the CPU of the whole client process (every client thread plus, for "
            "shmpool_pool, its completion thread) per job; worker_cpu_us_per_job is each shmpool worker's. "
            "Worker CPU comes from /proc in clock ticks (10 ms): meaningful over thousands of jobs only. "
            "Rows named PxT ran T threads in each of P client processes; their CPU is not collected.",
        ],
        "results": results,
        "ratios": ratios,
        "targets": {
            f"pool_vs_ppe_at_least_5x_at_{first}_client": ratios[first]["p50_speedup_vs_ppe"] >= TARGET_SPEEDUP,
            f"pool_vs_ppe_at_least_5x_at_{top}_clients": ratios[top]["p50_speedup_vs_ppe"] >= TARGET_SPEEDUP,
            f"pool_p99_under_1ms_at_{top}_clients": results["shmpool_pool"][top]["p99_us"] < TARGET_P99_US,
        },
        "coordinator_job_counts": jobs,
        "ipc": ipc,
        "ipc_goals": ipc_goals(ipc),
        "instances": benchlib.instance_names(),
        "leftovers_in_dev_shm": leftovers,
    }
    doc = benchlib.write_result("bench_jobs", payload, args.out_dir, save=not args.no_save, out_file=args.out)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(ipc_rounds.markdown(ipc, doc["machine"]) + goals_markdown(payload["ipc_goals"]),
                                 encoding="utf-8")
    return 1 if leftovers else 0


def _dev_shm(prefix: str) -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}
    except OSError:
        return set()


def _iceoryx2_files() -> set[str]:
    return _dev_shm("iox2_")


def _remove_iceoryx2_files(created: set[str]) -> list[str]:
    """Unlink what iceoryx2 left in /dev/shm during this run (its process-global management
    file outlives every node): only names that were not there before, once its peers ended."""
    removed = []
    for name in sorted(created):
        try:
            os.unlink(os.path.join("/dev/shm", name))
            removed.append(name)
        except OSError as exc:
            print(f"bench_jobs: could not remove /dev/shm/{name}: {exc}", file=sys.stderr)
    return removed


def _ipc_leftovers() -> list[str]:
    """The raw semaphore peer's segment and semaphores (its own names, not a shmpool instance's)."""
    return sorted(_dev_shm("bench-jobs-sem-") | _dev_shm("sem.bench-jobs-sem-"))


if __name__ == "__main__":
    sys.exit(main())
