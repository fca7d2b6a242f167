"""Allocation table latency, and the cost of opening the sample regions; prints JSON.

Four measurements, each against its target:

1. ``round_trip``: one ``allocate(n)`` + one ``free(h)`` on an empty table, per size
   (target: p99 < 100 µs); ``allocate`` and ``free`` are also reported alone.
2. ``round_trip_occupied``: the same with 30% of every pool's blocks held by long-lived
   allocations scattered across the pool, so the bitmap scan sees a realistic map of runs.
3. ``contended``: two spawned processes allocate and free concurrently; per-op latency in each.
4. ``region_open``: ``Region.open(path)`` with checksums + ``close`` for all 14 sample files
   (target: < 100 ms in total).

Every instance gets a fresh ``bench-alloc-<hex>`` name and is destroyed in a ``finally``; the
result lists any shared object left in /dev/shm (there should be none). GC stays enabled while
timing, as it is in real processes; it is collected before every series.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import queue
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import clock, percentiles  # noqa: E402

from shmpool.lowlevel import DEFAULT_POOLS, SharedInstance  # noqa: E402
from shmpool.substrate.names import list_objects  # noqa: E402
from shmpool.data.region import Region  # noqa: E402
from shmpool.data.sample import build_sample  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
TARGET_ROUND_TRIP_P99_US = 100.0
TARGET_REGION_OPEN_MS = 100.0
# The four sizes of the brief (one block each in the 4 KiB, 4 KiB, 64 KiB and 1 MiB pools), plus
# one multi-block request: only a run of > 1 block makes the bitmap scan look at the runs.
SIZES = {"100B": 100, "4KiB": 4 * KiB, "64KiB": 64 * KiB, "1MiB": 1 * MiB, "20KiB": 20 * KiB}
OCCUPANCY = 0.30
# Longest long-lived allocation, in blocks, per pool. Filling a pool takes one record per keeper
# and one per gap; 6 blocks at most in the 16384-block pool keeps that under the 4096 records.
KEEPER_MAX_BLOCKS = (6, 4, 3)
CONTENDED_SIZE = 4 * KiB
CONTENDERS = 2


_made_names: list[str] = []  # every instance name this run used, checked for leftovers at the end


def _fresh_name() -> str:
    _made_names.append(f"bench-alloc-{secrets.token_hex(4)}")
    return _made_names[-1]


def _timed_loop(allocate, free, nbytes: int, iterations: int):
    """``iterations`` allocate+free pairs, each half timed: (alloc ns, free ns, start, end, last handle)."""
    c = clock
    alloc_ns = [0] * iterations
    free_ns = [0] * iterations
    start = c()
    for i in range(iterations):
        t0 = c()
        h = allocate(nbytes)
        t1 = c()
        free(h)
        t2 = c()
        alloc_ns[i] = t1 - t0
        free_ns[i] = t2 - t1
    return np.array(alloc_ns), np.array(free_ns), start, c(), h


def _round_trips(table, nbytes: int, iterations: int, warmup: int) -> dict:
    allocate, free = table.allocate, table.free
    for _ in range(warmup):
        free(allocate(nbytes))
    gc.collect()
    a, f, _start, _end, h = _timed_loop(allocate, free, nbytes, iterations)
    both = percentiles(a + f)
    return {
        "nbytes": nbytes, "pool": h.pool, "blocks": h.block_count,
        "allocate_free": both, "allocate": percentiles(a), "free": percentiles(f),
        "target_met": both["p99_us"] < TARGET_ROUND_TRIP_P99_US,
    }


def _size_series(table, iterations: int, warmup: int) -> dict:
    out = {label: _round_trips(table, n, iterations, warmup) for label, n in SIZES.items()}
    out["target_met"] = all(r["target_met"] for r in out.values())
    return out


def bench_round_trip(iterations: int, warmup: int) -> dict:
    name = _fresh_name()
    inst = SharedInstance.create(name)
    try:
        return {"instance": "default pools, empty", **_size_series(inst.table, iterations, warmup)}
    finally:
        inst.destroy()


def _occupy(table, fraction: float, rng: np.random.Generator) -> list:
    """Hold ``fraction`` of every pool's blocks in long-lived allocations with free gaps between.

    On an empty pool each allocation lands at the start of the one free run, so allocating
    keeper, gap, keeper, gap, ... lays them out in that order; freeing the gaps then leaves the
    keepers scattered. The gaps are ``(1 - fraction) / fraction`` times their keeper on average.
    """
    keepers = []
    spread = (1 - fraction) / fraction
    configured = zip(table.block_sizes[:table.configured], table.block_counts[:table.configured])
    for p, (bs, count) in enumerate(configured):
        gaps, used = [], 0
        while True:
            k = int(rng.integers(1, KEEPER_MAX_BLOCKS[min(p, len(KEEPER_MAX_BLOCKS) - 1)] + 1))
            g = max(1, round(k * spread * rng.uniform(0.5, 1.5)))
            if g % 16 == 0:
                g -= 1  # 16 blocks of this pool may fit the next pool's block exactly: best fit would move it
            if used + k + g > count:
                break
            for blocks, into in ((k, keepers), (g, gaps)):
                h = table.allocate(blocks * bs)
                if h.pool != p:
                    table.free(h)
                    raise RuntimeError(f"occupancy set-up: {blocks} x {bs} B landed in pool {h.pool}, not {p}")
                into.append(h)
            used += k + g
        for h in gaps:
            table.free(h)
    return keepers


def bench_round_trip_occupied(iterations: int, warmup: int, seed: int = 0) -> dict:
    name = _fresh_name()
    # Filling a pool with keepers and gaps briefly uses all of it; the default 280 MiB limit is
    # smaller than the three pools together, so it is raised here. The limit is arithmetic only
    # on the allocate path, so this changes nothing that is timed.
    pools_bytes = sum(spec.nbytes for spec in DEFAULT_POOLS)
    inst = SharedInstance.create(name, memory_limit=2 * pools_bytes)
    try:
        table = inst.table
        keepers = _occupy(table, OCCUPANCY, np.random.default_rng(seed))
        st = table.stats()
        occupancy = {
            "long_lived_allocations": len(keepers),
            "records_in_use": st.live_allocations,
            "pools": [{"block_size": p.block_size, "utilization": round(p.utilization, 3),
                       "largest_free_run": p.largest_free_run, "fragmentation": round(p.fragmentation, 3)}
                      for p in st.pools],
        }
        series = _size_series(table, iterations, warmup)
        for h in keepers:
            table.free(h)
        return {"instance": f"default pools, {OCCUPANCY:.0%} of each pool held, scattered",
                "occupancy": occupancy, **series}
    finally:
        inst.destroy()


def _contender(name: str, nbytes: int, warmup: int, iterations: int, barrier, results) -> None:
    """Child process: attach, wait for the other contenders, then allocate/free ``iterations`` times."""
    inst = SharedInstance.attach(name)
    try:
        allocate, free = inst.table.allocate, inst.table.free
        for _ in range(warmup):
            free(allocate(nbytes))
        gc.collect()
        barrier.wait(timeout=120)
        a, f, start, end, _h = _timed_loop(allocate, free, nbytes, iterations)
        results.put((os.getpid(), {
            "allocate_free": percentiles(a + f), "allocate": percentiles(a), "free": percentiles(f),
            "start_ns": start, "end_ns": end,
        }))
    except BaseException as exc:
        results.put((os.getpid(), {"error": repr(exc)}))
        raise
    finally:
        inst.close()


def bench_contended(iterations: int, warmup: int) -> dict:
    name = _fresh_name()
    ctx = mp.get_context("spawn")
    inst = SharedInstance.create(name)
    procs: list = []
    try:
        barrier = ctx.Barrier(CONTENDERS)
        results = ctx.Queue()
        procs = [ctx.Process(target=_contender, name=f"bench-alloc-contender-{i}",
                             args=(name, CONTENDED_SIZE, warmup, iterations, barrier, results))
                 for i in range(CONTENDERS)]
        for p in procs:
            p.start()
        by_pid: dict[int, dict] = {}
        deadline = time.monotonic() + 120 + iterations * 0.01
        while len(by_pid) < CONTENDERS:
            try:
                pid, res = results.get(timeout=1.0)
                by_pid[pid] = res
                continue
            except queue.Empty:
                pass
            dead = [p for p in procs if p.exitcode is not None and p.pid not in by_pid]
            if dead or time.monotonic() > deadline:
                why = ", ".join(f"pid {p.pid} exit code {p.exitcode}" for p in dead) or "timed out"
                raise RuntimeError(f"contender failed without a result: {why}")
        for p in procs:
            p.join(timeout=30)
        errors = {pid: r["error"] for pid, r in by_pid.items() if "error" in r}
        if errors:
            raise RuntimeError(f"contender raised: {errors}")
        runs = list(by_pid.values())
        first_end = min(r["end_ns"] for r in runs)
        last_start = max(r["start_ns"] for r in runs)
        longest = max(r["end_ns"] - r["start_ns"] for r in runs)
        stats = inst.table.stats()
        per_process = [{k: v for k, v in r.items() if not k.endswith("_ns")} for r in runs]
        return {
            "processes": CONTENDERS, "nbytes": CONTENDED_SIZE, "iterations_each": iterations,
            # Share of the longest run during which all contenders were running at once.
            "overlap": round(max(0, first_end - last_start) / longest, 3) if longest else 0.0,
            "ops_per_s_total": round(2 * iterations * CONTENDERS / (longest / 1e9)) if longest else None,
            "lock_recoveries": stats.lock_recoveries,
            "per_process": per_process,
            "target_met": all(r["allocate_free"]["p99_us"] < TARGET_ROUND_TRIP_P99_US for r in per_process),
        }
    finally:
        for p in procs:
            if p.exitcode is None:
                p.terminate()
                p.join(timeout=5)
        inst.destroy()


def _ms(summary_us: dict) -> dict:
    return {k.replace("_us", "_ms"): (round(v / 1000, 3) if k.endswith("_us") else v)
            for k, v in summary_us.items()}


def _open_all(paths: list[Path], repeats: int, verify: bool) -> tuple[list[int], dict[str, list[int]]]:
    """Open + close every file ``repeats`` times: per-pass totals and per-file times, in ns."""
    totals: list[int] = []
    per_file: dict[str, list[int]] = {p.name: [] for p in paths}
    gc.collect()
    for _ in range(repeats):
        start = clock()
        for path in paths:
            t = clock()
            Region.open(path, verify_checksums=verify).close()
            per_file[path.name].append(clock() - t)
        totals.append(clock() - start)
    return totals, per_file


def bench_region_open(repeats: int, workdir: Path) -> dict:
    t0 = clock()
    paths = [Path(p) for p in build_sample(workdir / "sample")]
    build_s = (clock() - t0) / 1e9
    for path in paths:  # warm-up: page cache and imports; not counted
        with Region.open(path, verify_checksums=True):
            pass
    totals, per_file = _open_all(paths, repeats, verify=True)
    # Without checksums: how much of the total is CRC work and how much is map + parse + index.
    unverified, _ = _open_all(paths, repeats, verify=False)
    total_ms = _ms(percentiles(totals))
    slowest = sorted(per_file, key=lambda n: -float(np.median(per_file[n])))[:3]
    return {
        "files": len(paths),
        "bytes": sum(p.stat().st_size for p in paths),
        "build_sample_s": round(build_s, 2),
        "repeats": repeats,
        "all_files": total_ms,
        "all_files_without_checksums": _ms(percentiles(unverified)),
        "slowest_files_median_ms": {n: round(float(np.median(per_file[n])) / 1e6, 3) for n in slowest},
        "target_met": total_ms["p99_ms"] < TARGET_REGION_OPEN_MS,
    }


def _raise_on_sigterm(signum, _frame):
    raise SystemExit(128 + signum)  # so the finally blocks unlink what they created


def main(argv=None) -> int:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000,
                        help="timed allocate+free round trips per size (default 20000)")
    parser.add_argument("--quick", action="store_true",
                        help="a few iterations of everything: a smoke test, not a measurement")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    if args.quick:
        iterations, warmup, contended, repeats = 200, 50, 500, 3
    else:
        iterations = args.iterations
        warmup, contended, repeats = max(100, iterations // 10), iterations, 20

    with tempfile.TemporaryDirectory(prefix="bench-alloc-") as tmp:
        # Lock files of the benchmark's instances go here, not into the shared runtime folder;
        # spawned contenders inherit the variable.
        os.environ["SHMPOOL_RUNTIME_DIR"] = tmp
        try:
            payload = {
                "config": {"iterations": iterations, "warmup": warmup, "contended_iterations": contended,
                           "region_repeats": repeats, "quick": args.quick},
                "round_trip": bench_round_trip(iterations, warmup),
                "round_trip_occupied": bench_round_trip_occupied(iterations, warmup),
                "contended": bench_contended(contended, warmup),
                "region_open": bench_region_open(repeats, Path(tmp)),
            }
        finally:
            leftovers = sorted(o for name in _made_names for group in list_objects(name) for o in group)
    payload["leftover_shm_objects"] = leftovers
    payload["target_met"] = {
        "round_trip_p99_lt_100us": payload["round_trip"]["target_met"],
        "round_trip_occupied_p99_lt_100us": payload["round_trip_occupied"]["target_met"],
        "contended_p99_lt_100us": payload["contended"]["target_met"],
        "region_open_14_lt_100ms": payload["region_open"]["target_met"],
    }
    benchlib.write_result("bench_alloc", payload, args.out_dir, save=not args.no_save)
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
