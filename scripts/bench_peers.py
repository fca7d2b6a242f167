"""shmpool against what users would pick instead (py-lmdb, Manager().dict(), ProcessPoolExecutor), one run; prints JSON.

Needs the ``bench`` extra (lmdb, psutil): ``SHMPOOL_EXTRAS=bench scripts/test`` installs it.
The 14-dimension sample is loaded into each system (a shmpool coordinator; one LMDB environment
in a temporary folder; one ``Manager().dict()``), then, in the same run:

1. ``lookup``: one layer at a time, timed per call in a spawned reader process (never the loader)
   in which the systems take turns every 1000 calls: shmpool ``load_layer_context`` vs LMDB
   ``get`` with ``buffers=True`` (zero-copy) in a fresh read transaction per get and inside one
   long transaction; ``Manager().dict()`` get in a second process. ``batch``: 20 steps of a
   navigation path, one ``load_contexts`` call vs one LMDB transaction with 20 gets (and the same
   with the buffers copied out, which is what keeping them beyond the transaction costs);
2. ``concurrency``: 1 reader, one single-threaded reader per core, and 128 readers (32 threads in
   each of 4 processes) looking up during a common window, in 3 rounds: total lookups/s (median,
   p1, p99 of 100 ms windows), per-lookup p99, and lookups per CPU-second against the single
   reader of the same round (the per-core figure); and the same rows calling the limit row's
   function (``limit``: nothing of shmpool's in the call), the interpreter's own cost of the
   threads, against which the per-core figure is also given;
3. ``publish``: a new version of a 1 MiB and a 16 MiB dimension (64 KiB layers): ``crystallize``
   into never-touched pages (``fresh``) and into reused ones (``warm``), vs an LMDB write
   transaction putting the same layers with sync on and off, vs numpy memcpy of the same bytes
   (into a reused buffer, and into a new anonymous mapping);
4. ``memory``: N reader processes (default 100) attach and touch every page of every layer; the
   sum over them of ``memory_full_info().pss`` after minus before (the whole cost of attaching), the
   PSS of the data mappings alone, per-reader USS, and the growth per reader by kind of mapping
   (data, anonymous, other shared memory, files), against the data size. The baseline is taken
   after the harness's own page toucher ran once (``--no-harness-warm-up``: before it);
5. ``jobs``: the same lookup as a job, shmpool worker pool (``connect().lookup``) vs
   ``ProcessPoolExecutor``, 1 and 128 client threads (scripts/bench_jobs.py does the work).

Units: ``_us`` microseconds, ``_ms`` milliseconds; MiB is 2^20 bytes. Every latency carries
median and p99. ``targets`` compares each headline ratio with the issue's target.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import random
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import benchlib  # noqa: E402
import bench_jobs  # noqa: E402
from benchlib import clock, percentiles  # noqa: E402

import shmpool  # noqa: E402
from shmpool.coordinator import Coordinator  # noqa: E402
from shmpool._core._lookup import PrebuiltSlice  # noqa: E402
from shmpool.data.sample import build_sample  # noqa: E402
from shmpool.substrate.mapped_files import store_dir  # noqa: E402

PREFIX = "bench-peers"
KEY = struct.Struct(">IQ")  # big-endian: LMDB keeps keys sorted, so one dimension's layers are adjacent
MiB = 2**20
LAYER_BYTES = 64 * 1024     # publish: layers of the 1 MiB and 16 MiB dimensions
BATCH_STEPS = 20
WINDOW_S = 0.1              # throughput is also reported per window of this length
CHILD_TIMEOUT = 600.0
PAGE = mmap.PAGESIZE
TARGETS = {
    "single_lookup_p99_vs_lmdb": 2.0,          # at most 2x py-lmdb get (fresh txn)
    "single_lookup_p99_vs_lmdb_long_txn": 1.2,  # issue 12: within 1.2x of a get in one long txn
    "batch20_vs_lmdb_one_txn": 0.9,            # issue 12: at most 0.9x 20 gets in one txn (median, p99)
    "lookup_p50_vs_lmdb_long_txn": 0.5,        # issue 22: p50 at most half a get in one long txn
    "lookup_p99_vs_lmdb_long_txn": 0.7,        # issue 22: p99 at most 0.7x
    "batch20_median_vs_lmdb_one_txn_22": 0.4,  # issue 22: a batch of 20 at most 0.4x 20 gets in one txn
    "lookup_p50_vs_limit": 1.5,                # issue 22: within 1.5x of a C call returning a prebuilt slice
    "readers_per_core_vs_one": 0.90,           # within 10% of a single reader
    "crystallize_fraction_of_memcpy": 0.25,    # >= 25% of memcpy bandwidth at 16 MiB
    "pss_ratio_to_data": 1.1,                  # issue 12: 100 readers' whole PSS <= 1.1x data size
    "pss_ratio_to_data_22": 1.05,              # issue 22: the same <= 1.05x
    "jobs_speedup_vs_ppe": 5.0,                # >= 5x faster than ProcessPoolExecutor
    "jobs_p99_us_at_128": 1000.0,              # p99 < 1 ms at 128 clients
}


def _lmdb_env(path: str, *, readonly: bool = True, sync: bool = True):
    import lmdb

    # readahead off: the data set fits in RAM, and readahead would fault in pages nobody asked
    # for (it inflates the PSS of readers). sync/metasync only matter to writers.
    return lmdb.open(path, map_size=1 << 30, readonly=readonly, lock=True, max_readers=1024,
                     readahead=False, subdir=True, sync=sync, metasync=sync)


def _ms(samples_ns) -> dict:
    """Summary in milliseconds of samples in nanoseconds (publishing is a ms-scale operation)."""
    s = percentiles(samples_ns)
    return {k.replace("_us", "_ms"): (None if v is None else round(v / 1000, 3)) if k.endswith("_us") else v
            for k, v in s.items() if k not in ("p999_us", "mean_us")}


def _touch(buf) -> int:
    """Read one byte of every page ``buf`` spans (the first, one per page, the last)."""
    if not len(buf):
        return 0
    a = np.frombuffer(buf, dtype=np.uint8)
    return int(a[::PAGE].sum()) + int(a[-1])


# ----------------------------------------------------------------------------- 1. lookup and batch

CHUNK = 1000  # lookups (or 1000 // 20 batches) per turn when the systems take turns


def _latency_child(name: str, lmdb_path: str, keys, paths, n: int, batches: int, results) -> None:
    """Single-lookup and batch latencies of shmpool and LMDB, measured in this one reader process.

    The systems take turns in chunks (shmpool, LMDB fresh txn, LMDB long txn, ...), so that a slow
    phase of the machine (this is a shared VM: its speed drifts by tens of percent over seconds)
    lands on every system alike instead of on whichever ran then.
    """
    try:
        rng = random.Random(1)
        picks = [rng.choice(keys) for _ in range(n)]
        packed = [KEY.pack(d, l) for d, l in picks]
        nav = [shmpool.NavigationPath(p) for p in paths]
        bpaths = [[KEY.pack(d, l) for d, l in p] for p in paths]
        lat = {k: [] for k in ("shmpool_single", "limit_prebuilt_slice", "lmdb_single_fresh_txn",
                               "lmdb_single_long_txn", "shmpool_batch", "lmdb_batch", "lmdb_batch_copied_out")}
        env = _lmdb_env(lmdb_path)
        with shmpool.attach(name) as reader, env.begin(buffers=True) as long_txn:
            load, begin, get_long = reader.load_layer_context, env.begin, long_txn.get
            for d, l in keys:  # every generation mapped, every page faulted in: the steady state
                _touch(load(d, l).content)
                _touch(get_long(KEY.pack(d, l)))
            # The limit row: a C call of the lookup's shape returning a prebuilt memoryview slice.
            limit = PrebuiltSlice(load(*keys[0]).content).get
            for lo in range(0, n, CHUNK):
                out = lat["shmpool_single"]
                for d, l in picks[lo:lo + CHUNK]:
                    t0 = clock()
                    load(d, l)
                    out.append(clock() - t0)
                out = lat["limit_prebuilt_slice"]
                for d, l in picks[lo:lo + CHUNK]:
                    t0 = clock()
                    limit(d, l)
                    out.append(clock() - t0)
                out = lat["lmdb_single_fresh_txn"]
                for k in packed[lo:lo + CHUNK]:
                    t0 = clock()
                    with begin(buffers=True) as txn:
                        txn.get(k)
                    out.append(clock() - t0)
                out = lat["lmdb_single_long_txn"]
                for k in packed[lo:lo + CHUNK]:
                    t0 = clock()
                    get_long(k)
                    out.append(clock() - t0)
            step = max(1, CHUNK // BATCH_STEPS)
            for lo in range(0, batches, step):
                out = lat["shmpool_batch"]
                for i in range(lo, min(lo + step, batches)):
                    p = nav[i % len(nav)]
                    t0 = clock()
                    reader.load_contexts(p)
                    out.append(clock() - t0)
                out = lat["lmdb_batch"]
                for i in range(lo, min(lo + step, batches)):
                    p = bpaths[i % len(bpaths)]
                    t0 = clock()
                    with begin(buffers=True) as txn:
                        get = txn.get
                        _ = [get(k) for k in p]  # the 20 results held, as load_contexts holds its 20
                    out.append(clock() - t0)
            # Apart: copying 20 layers out evicts the cache lines the two batches above reuse.
            out = lat["lmdb_batch_copied_out"]
            for i in range(batches):
                p = bpaths[i % len(bpaths)]
                t0 = clock()
                with begin(buffers=True) as txn:
                    get = txn.get
                    _ = [bytes(get(k)) for k in p]
                out.append(clock() - t0)
        env.close()
        results.put(("done", {k: np.asarray(v, dtype=np.int64).tobytes() for k, v in lat.items()}))
    except BaseException as exc:
        results.put(("error", repr(exc)))
        raise


def _manager_child(shared, keys, n: int, results) -> None:
    """``Manager().dict()`` gets: one round trip to the manager process each (the DictProxy)."""
    try:
        rng = random.Random(1)
        get, lat = shared.get, []
        for d, l in (rng.choice(keys) for _ in range(n)):
            t0 = clock()
            get((d, l))
            lat.append(clock() - t0)
        results.put(("done", np.asarray(lat, dtype=np.int64).tobytes()))
    except BaseException as exc:
        results.put(("error", repr(exc)))
        raise


def _run_child(ctx, target, args, label: str):
    results = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, results), name=f"bench-peers-{label}")
    p.start()
    try:
        return benchlib.collect(results, [p], 1, CHILD_TIMEOUT)[0]
    finally:
        benchlib.reap([p])


def compare_lookup(name: str, lmdb_path: str, shared, keys, n: int, batches: int) -> dict:
    ctx = mp.get_context("spawn")
    rng = random.Random(5)
    # A navigation path: 20 random steps over the whole sample (most steps change dimension).
    paths = [rng.sample(keys, BATCH_STEPS) for _ in range(50)]
    raw = _run_child(ctx, _latency_child, (name, lmdb_path, keys, paths, n, batches), "lookup")
    s = {k: percentiles(np.frombuffer(v, dtype=np.int64)) for k, v in raw.items()}
    for k in ("shmpool_single", "limit_prebuilt_slice"):  # unrounded: the two differ by tens of ns
        s[k]["median_ns"] = float(np.median(np.frombuffer(raw[k], dtype=np.int64)))
    manager = _run_child(ctx, _manager_child, (shared, keys, max(1, n // 10)), "manager")
    return {
        "shmpool": {"single": s["shmpool_single"], "batch": s["shmpool_batch"]},
        "limit_prebuilt_slice": s["limit_prebuilt_slice"],
        "lmdb": {"single_fresh_txn": s["lmdb_single_fresh_txn"], "single_long_txn": s["lmdb_single_long_txn"],
                 "batch": s["lmdb_batch"], "batch_copied_out": s["lmdb_batch_copied_out"]},
        # ~50 us a round trip: 10x fewer samples are plenty for the tail.
        "manager": {"single": percentiles(np.frombuffer(manager, dtype=np.int64))},
        "what": "per call, timed in one spawned reader process (not the loader) where shmpool and LMDB take "
                f"turns every {CHUNK} lookups / {CHUNK // BATCH_STEPS} batches; random (dimension, layer) over all "
                "2800 layers, every generation mapped and page touched first; includes two clock reads "
                "(machine.clock_overhead_ns). limit_prebuilt_slice: the physical limit of a lookup, a C method of the "
                "lookup's shape, get(dimension_id, layer_id), returning a memoryview slice made beforehand "
                "(shmpool._core._lookup.PrebuiltSlice), taking its turn after shmpool's. batch: 20 random steps of the sample, the 20 results held; lmdb "
                "batch_copied_out copies every buffer out (buffers=True views die with their transaction; "
                "shmpool's stay valid and pinned), measured after the others. manager: Manager().dict() get "
                "through its DictProxy, one round trip per get, in a second spawned process",
    }


# ----------------------------------------------------------------------------- 2. concurrency

def _throughput_child(system: str, target: str, keys, threads: int, seed: int, go, window, results) -> None:
    """``threads`` threads look up (each call timed) from window[0] to window[1] (time.monotonic())."""
    try:
        if system == "shmpool":
            reader = shmpool.attach(target)
            load = reader.load_layer_context

            def lookup(k):
                return load(k[0], k[1])
        elif system == "limit":  # the control: the same threads and loop, a C call returning a prebuilt slice
            reader = shmpool.attach(target)
            limit = PrebuiltSlice(reader.load_layer_context(*keys[0]).content).get

            def lookup(k):
                return limit(k[0], k[1])
        else:
            env = _lmdb_env(target)
            packed = {k: KEY.pack(*k) for k in keys}
            begin = env.begin

            def lookup(k):  # a fresh read txn per get: a reader that sees new versions, as shmpool's does
                with begin(buffers=True) as txn:
                    return txn.get(packed[k])
        for k in keys:
            lookup(k)
        lats: list[list[int]] = [[] for _ in range(threads)]
        ends: list[list[int]] = [[] for _ in range(threads)]
        totals = [0] * threads
        barrier = threading.Barrier(threads + 1)

        def run(t: int) -> None:
            rng = random.Random(seed * 1000 + t)
            picks = [rng.choice(keys) for _ in range(4096)]
            mine, my_ends = lats[t], ends[t]
            now, c, n = time.monotonic, clock, 0
            barrier.wait()
            start, stop = window[0], window[1]
            time.sleep(max(0.0, start - now()))
            while now() < stop:
                for k in picks[(n & 4095):(n & 4095) + 64]:
                    t0 = c()
                    lookup(k)
                    mine.append(c() - t0)
                n += 64
                my_ends.append(time.monotonic_ns())  # the batch of 64 ended: rates per window
            totals[t] = n

        pool = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
        for th in pool:
            th.start()
        results.put(("ready", os.getpid()))
        go.wait(CHILD_TIMEOUT)
        cpu0 = time.process_time()
        barrier.wait()
        for th in pool:
            th.join()
        cpu = time.process_time() - cpu0  # the whole process: threads, GIL hand-offs, the sleep-wait
        if system in ("shmpool", "limit"):
            reader.close()
        else:
            env.close()
        sample = np.concatenate([np.asarray(x[:: max(1, len(x) // 5000)], dtype=np.int64) for x in lats])
        results.put(("done", {"lookups": sum(totals), "cpu_seconds": cpu, "latencies": sample.tobytes(),
                              "ends": np.asarray([e for x in ends for e in x], dtype=np.int64).tobytes()}))
    except BaseException as exc:
        results.put(("error", repr(exc)))
        raise


def _throughput_row(ctx, system: str, target: str, keys, processes: int, threads: int, seconds: float) -> dict:
    go, results, window = ctx.Event(), ctx.Queue(), ctx.Array("d", 2, lock=False)
    procs = [ctx.Process(target=_throughput_child, args=(system, target, keys, threads, i, go, window, results),
                         name=f"bench-peers-reader-{i}") for i in range(processes)]
    try:
        for p in procs:
            p.start()
        benchlib.collect(results, procs, processes, CHILD_TIMEOUT)  # all attached, warmed and waiting
        window[0] = time.monotonic() + 0.05 + 0.005 * processes
        window[1] = window[0] + seconds
        go.set()
        reports = benchlib.collect(results, procs, processes, seconds + CHILD_TIMEOUT)
    finally:
        benchlib.reap(procs)
    lookups = sum(r["lookups"] for r in reports)
    cpu = sum(r["cpu_seconds"] for r in reports)
    ends = np.concatenate([np.frombuffer(r["ends"], dtype=np.int64) for r in reports]) / 1e9
    bins = np.arange(window[0], window[1] + 1e-9, WINDOW_S)
    rates = np.histogram(ends, bins=bins)[0] * 64 / WINDOW_S
    in_window = int(((ends >= window[0]) & (ends <= window[1])).sum()) * 64
    return {"processes": processes, "threads_each": threads, "readers": processes * threads,
            "lookups_per_s": round(in_window / seconds),
            "lookups_per_s_windows": {"median": round(float(np.median(rates))),
                                      "p1": round(float(np.percentile(rates, 1))),
                                      "p99": round(float(np.percentile(rates, 99))), "windows": int(rates.size),
                                      "window_s": WINDOW_S},
            "lookups_per_cpu_s": round(lookups / cpu) if cpu else None,
            "cpu_seconds": round(cpu, 3),
            "latency": percentiles(np.concatenate([np.frombuffer(r["latencies"], dtype=np.int64)
                                                   for r in reports]))}


def compare_concurrency(name: str, lmdb_path: str, keys, processes: int, threads: int, seconds: float,
                        rounds: int) -> dict:
    """Rows of 1 reader, ``cores`` single-threaded readers and ``processes`` x ``threads`` readers, for
    each system, ``rounds`` times in turn; each round's ratios compare rows measured seconds apart."""
    ctx = mp.get_context("spawn")
    cores = len(os.sched_getaffinity(0))
    shapes = {"1_reader": (1, 1), f"{cores}_readers_1_thread_each": (cores, 1),
              f"{processes * threads}_readers": (processes, threads)}
    many = f"{processes * threads}_readers"
    per_round: dict = {"shmpool": [], "lmdb": [], "limit": []}
    for _ in range(rounds):
        for system, target in (("shmpool", name), ("lmdb", lmdb_path), ("limit", name)):
            rows = {label: _throughput_row(ctx, system, target, keys, p, t, seconds)
                    for label, (p, t) in shapes.items()}
            one = rows["1_reader"]
            for row in rows.values():
                # lookups per CPU-second: what one core delivers; it falls only through contention
                # (shared cache lines, locks) and scheduling (context switches, GIL hand-offs).
                row["per_core_ratio_vs_1_reader"] = round(row["lookups_per_cpu_s"] / one["lookups_per_cpu_s"], 3)
                # wall lookups/s per busy core against the single reader's.
                row["wall_per_core_ratio_vs_1_reader"] = round(
                    row["lookups_per_s"] / min(cores, row["processes"]) / one["lookups_per_s"], 3)
            per_round[system].append(rows)
    out: dict = {}
    for system, rounds_ in per_round.items():
        ratios = [r[many]["per_core_ratio_vs_1_reader"] for r in rounds_]
        median_round = rounds_[int(np.argsort(ratios)[len(ratios) // 2])]
        out[system] = {**median_round, "per_core_ratio_many_vs_one": median_round[many]["per_core_ratio_vs_1_reader"],
                       "per_core_ratio_many_vs_one_each_round": ratios,
                       "per_core_ratio_cores_vs_one_each_round": [
                           r[f"{cores}_readers_1_thread_each"]["per_core_ratio_vs_1_reader"] for r in rounds_]}
    # The interpreter's own share: the same rows calling the limit function lose what CPython's GIL
    # costs that many threads (hand-offs, waiting threads' timed wake-ups, refilled caches).
    over = [s[many]["per_core_ratio_vs_1_reader"] / c[many]["per_core_ratio_vs_1_reader"]
            for s, c in zip(per_round["shmpool"], per_round["limit"], strict=True)]
    out["shmpool"]["per_core_ratio_over_limit_each_round"] = [round(x, 3) for x in over]
    out["shmpool"]["per_core_ratio_over_limit"] = round(float(np.median(over)), 3)
    out["cores"] = cores
    out["rounds"] = rounds
    out["what"] = (f"each call timed (two clock reads included). Rows: 1 reader; {cores} single-threaded reader "
                   f"processes (one per core); {processes} processes x {threads} threads, which share {cores} cores "
                   "and each process's GIL (threads add concurrency, not throughput). lmdb opens a read txn per "
                   "get; limit calls PrebuiltSlice.get (the limit row) in the same loop: the interpreter's own cost. "
                   "per_core_ratio = lookups per CPU-second / the single reader's in the same round; rows "
                   f"shown are the round with the median {many} ratio; per_core_ratio_over_limit: shmpool's "
                   f"{many} ratio / limit's, per round, then the median")
    return out


# ----------------------------------------------------------------------------- 3. publish

def _fresh_memcpy(src: np.ndarray) -> None:
    """Copy into a new anonymous mapping: every page faulted in and zeroed on first touch, like
    never-used blocks of a segment (np.empty may reuse pages glibc already faulted in)."""
    with mmap.mmap(-1, src.nbytes) as fresh:
        memoryview(fresh)[:] = memoryview(src)


def _free_superseded(coord: Coordinator, timeout: float = 2.0) -> None:
    """Wait until no superseded generation waits to be freed (GRACE, then nobody pins it)."""
    deadline = time.monotonic() + timeout
    while coord.stats()["superseded_pending"] and time.monotonic() < deadline:
        time.sleep(0.005)
        coord.reclaim()


def _crystallize(coord: Coordinator, dim: int, contents) -> tuple[int, int]:
    """Fill a proto-dimension (CRC32s computed here, not timed), then time ``crystallize``: (ns, bytes)."""
    proto = coord.create_proto_dimension(dim, f"publish-{dim}")
    for lid, content in enumerate(contents):
        proto.add_layer(lid, content)
    nbytes = proto.nbytes()
    t0 = clock()
    coord.crystallize(dim)
    return clock() - t0, nbytes


def compare_publish(coord: Coordinator, tmp: Path, sizes_mib, fresh_repeats: int, repeats: int) -> dict:
    out: dict = {}
    for k, mib in enumerate(sizes_mib):
        dim, layers = 200 + k, mib * MiB // LAYER_BYTES
        rng = np.random.default_rng(mib)
        payloads = [rng.integers(0, 256, LAYER_BYTES, dtype=np.uint8).tobytes() for _ in range(4)]
        contents = [payloads[i % 4] for i in range(layers)]
        # A reader that has seen generation g pins g and every later one (it may be about to move
        # to any of them), so while it lives each new generation goes to never-touched blocks.
        with shmpool.attach(coord.name) as pinner:
            fresh = []
            for _ in range(fresh_repeats):
                ns, region_bytes = _crystallize(coord, dim, contents)
                fresh.append(ns)
                pinner.load_layer_context(dim, 0)
        _free_superseded(coord)
        warm = []
        for _ in range(repeats):
            ns, region_bytes = _crystallize(coord, dim, contents)
            warm.append(ns)
            _free_superseded(coord)  # so that the next one reuses its pages
        row: dict = {"layers": layers, "layer_bytes": LAYER_BYTES, "content_bytes": layers * LAYER_BYTES,
                     "region_bytes": region_bytes,
                     "shmpool_crystallize_fresh_pages": _ms(fresh), "shmpool_crystallize_warm": _ms(warm)}
        for sync in (True, False):
            env = _lmdb_env(str(tmp / f"lmdb-publish-{mib}-{sync}"), readonly=False, sync=sync)
            times = []
            for _ in range(repeats + 1):  # the first commit grows the file; reported apart
                t0 = clock()
                with env.begin(write=True) as txn:
                    for lid, content in enumerate(contents):
                        txn.put(KEY.pack(dim, lid), content)
                times.append(clock() - t0)
            env.close()
            row[f"lmdb_write_txn_sync_{'on' if sync else 'off'}"] = {**_ms(times[1:]),
                                                                       "first_ms": round(times[0] / 1e6, 3)}
        src = np.frombuffer(b"".join(contents), dtype=np.uint8)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        warm_copy, fresh_copy = [], []
        for _ in range(repeats):
            t0 = clock()
            np.copyto(dst, src)
            warm_copy.append(clock() - t0)
            t0 = clock()
            _fresh_memcpy(src)
            fresh_copy.append(clock() - t0)
        row["memcpy_warm"] = _ms(warm_copy)
        row["memcpy_fresh_pages"] = _ms(fresh_copy)
        gbps = lambda ms: round(src.nbytes / (ms / 1e3) / 1e9, 2)  # noqa: E731
        row["GB_per_s"] = {"crystallize_warm": gbps(row["shmpool_crystallize_warm"]["median_ms"]),
                           "crystallize_fresh_pages": gbps(row["shmpool_crystallize_fresh_pages"]["median_ms"]),
                           "memcpy_warm": gbps(row["memcpy_warm"]["median_ms"]),
                           "memcpy_fresh_pages": gbps(row["memcpy_fresh_pages"]["median_ms"])}
        row["fraction_of_memcpy"] = {
            "warm": round(row["memcpy_warm"]["median_ms"] / row["shmpool_crystallize_warm"]["median_ms"], 3),
            "fresh_pages": round(row["memcpy_fresh_pages"]["median_ms"]
                                 / row["shmpool_crystallize_fresh_pages"]["median_ms"], 3)}
        out[f"{mib}MiB"] = row
    out["what"] = ("crystallize: allocate, write header + index + layers into shared memory, re-parse the region, "
                   "publish (add_layer and its CRC32s not timed). fresh_pages: into never-touched blocks (older "
                   "generations pinned); warm: into blocks freed by the previous repeat. lmdb: one write txn "
                   "putting the same layers in a folder of " + str(tmp) + "; sync_on = fdatasync at commit "
                   "(sync=True, metasync=True), sync_off = no flush (sync=False, metasync=False). memcpy: "
                   "np.copyto of the same bytes into a reused buffer (warm) or a new anonymous mapping "
                   "(fresh_pages; 4 KiB pages, as shmem here). fraction_of_memcpy = memcpy time / crystallize time")
    return out


# ----------------------------------------------------------------------------- 4. memory

def import_reader_code() -> None:
    """Both systems' reader code, imported before the baseline. shmpool's namespaces are lazy
    (PEP 562): a reader's modules would load at its first attach and count as the reader's growth,
    while `import lmdb` loads all of LMDB's before it. Code is paid once per process, not per
    reader or per byte of data: not what the comparison measures."""
    import lmdb  # noqa: F401
    import shmpool.data.reader  # noqa: F401
    import shmpool.data.snapshot  # noqa: F401
    import shmpool.substrate.instance  # noqa: F401


def _pss_child(system: str, target: str, keys, go, release, results, warm_up: bool = True) -> None:
    """Report ready (imports done), wait, attach and touch every page of every layer, wait again."""
    try:
        import_reader_code()

        # The harness's own code before the baseline: _touch runs numpy code whose pages (about
        # 1 MB of _multiarray_umath, fault-around included) the child would otherwise fault in
        # after it, ~10 kB per reader in either system's growth that is not the system's.
        if warm_up:
            _touch(bytes(2 * PAGE))
        results.put(("ready", os.getpid()))
        go.wait(CHILD_TIMEOUT)
        total = 0
        if system == "shmpool":
            reader = shmpool.attach(target)
            for d, l in keys:  # contexts are dropped: the pages stay mapped, the objects would be ours
                total += _touch(reader.load_layer_context(d, l).content)
        else:
            env = _lmdb_env(target)
            txn = env.begin(buffers=True)
            for d, l in keys:
                total += _touch(txn.get(KEY.pack(d, l)))
        results.put(("touched", total))
        release.wait(CHILD_TIMEOUT)
    except BaseException as exc:
        results.put(("error", repr(exc)))
        raise


def _kb(samples_bytes) -> dict:
    """Median, p99 and max in kB (10^3 bytes) of per-reader byte counts."""
    s = percentiles(samples_bytes)  # divides by 1000: bytes in, kB out
    return {k.replace("_us", ""): v for k, v in s.items() if k in ("median_us", "p99_us", "max_us", "n")}


def _mapped_pss(pid: int, markers: tuple[str, ...]) -> int:
    import psutil

    return sum(m.pss for m in psutil.Process(pid).memory_maps(grouped=True) if any(k in m.path for k in markers))


def _pss_by_class(pid: int, markers: tuple[str, ...]) -> dict[str, int]:
    """A process's PSS in bytes by kind of mapping: the data (``markers``), anonymous memory (the
    heap, malloc arenas, stacks: the process's own objects), the instance's other shared memory
    (shmpool's control segment, LMDB's lock file) and other files (shared libraries)."""
    import psutil

    out = dict.fromkeys(("data", "anonymous", "other_shared_memory", "files"), 0)
    for m in psutil.Process(pid).memory_maps(grouped=True):
        path = m.path
        if any(k in path for k in markers):
            kind = "data"
        elif not path.startswith("/"):
            kind = "anonymous"
        elif path.startswith("/dev/shm/") or path.endswith("lock.mdb"):
            kind = "other_shared_memory"
        else:
            kind = "files"
        out[kind] += m.pss
    return out


def compare_memory(name: str, lmdb_path: str, keys, data_bytes: int, readers: int, others,
                   warm_up: bool = True) -> dict:
    import psutil

    ctx = mp.get_context("spawn")
    out: dict = {}
    # shmpool's data: its pool segments and the region files it serves by mapping them.
    for system, target, marker in (("shmpool", name, (f"/shmpool.{name}.pool", str(store_dir()) + os.sep)),
                                   ("lmdb", lmdb_path, (os.path.join(lmdb_path, "data.mdb"),))):
        go, release, results = ctx.Event(), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_pss_child, args=(system, target, keys, go, release, results, warm_up),
                             name=f"bench-peers-pss-{i}") for i in range(readers)]
        try:
            for p in procs:
                p.start()
            benchlib.collect(results, procs, readers, CHILD_TIMEOUT)
            before = [psutil.Process(p.pid).memory_full_info() for p in procs]
            classes_before = [_pss_by_class(p.pid, marker) for p in procs]
            go.set()
            benchlib.collect(results, procs, readers, CHILD_TIMEOUT)
            after = [psutil.Process(p.pid).memory_full_info() for p in procs]
            classes_after = [_pss_by_class(p.pid, marker) for p in procs]
            data_pss = sum(_mapped_pss(p.pid, marker) for p in procs)
            # The same mappings in every other process that holds them (coordinator, workers).
            others_pss = sum(_mapped_pss(pid, marker) for pid in others) if system == "shmpool" else 0
            release.set()
        finally:
            benchlib.reap(procs)
        delta = [a.pss - b.pss for a, b in zip(after, before)]
        uss = [a.uss - b.uss for a, b in zip(after, before)]  # bytes: percentiles() / 1000 gives kB
        out[system] = {
            "readers": readers, "data_bytes": data_bytes,
            "pss_delta_sum_bytes": int(sum(delta)),
            "ratio_pss_delta_to_data": round(sum(delta) / data_bytes, 3),
            "pss_data_mappings_sum_bytes": int(data_pss),
            "ratio_data_mappings_to_data": round(data_pss / data_bytes, 3),
            "pss_data_mappings_other_processes_bytes": int(others_pss),
            "pss_delta_per_reader_kB": _kb(delta),
            "private_uss_delta_per_reader_kB": _kb(uss),
            # Where the growth is, per reader on average (kB), by kind of mapping: what is not
            # "data" is the reader's overhead (docs/performance.md, issue 22).
            "pss_delta_by_mapping_per_reader_kB": {
                kind: round(sum(a[kind] - b[kind] for a, b in zip(classes_after, classes_before)) / readers / 1000, 2)
                for kind in classes_after[0]},
            "pss_after_sum_bytes_whole_processes": int(sum(a.pss for a in after)),
        }
    out["what"] = ("pss_delta: sum over the readers of memory_full_info().pss after attaching and touching every "
                   "page of every layer minus the same before (imports done, the harness's _touch run once): all "
                   "an attached reader costs. data_mappings: the PSS of the data mappings alone (shmpool pool "
                   "segments and served region files / LMDB data.mdb) "
                   "summed over the readers; other processes (coordinator = this process, workers) hold the "
                   "rest of the shmpool pages. private_uss_delta_per_reader: memory no other process shares "
                   "(the reader's own index and objects), kB")
    return out


# ----------------------------------------------------------------------------- 5. jobs

def compare_jobs(coord: Coordinator, workers: int, keys, per_thread: int, clients: int) -> dict:
    plan = [(1, per_thread), (clients, max(20, per_thread * 4 // clients))]
    ours = bench_jobs.bench_shmpool(coord, keys, plan, None)
    ppe = bench_jobs.bench_process_pool(coord.name, workers, keys, plan)
    ratios = {str(t): {"p50_speedup": round(ppe[str(t)]["median_us"] / ours[str(t)]["median_us"], 2),
                       "p99_speedup": round(ppe[str(t)]["p99_us"] / ours[str(t)]["p99_us"], 2),
                       "throughput_ratio": round(ours[str(t)]["jobs_per_s"] / ppe[str(t)]["jobs_per_s"], 2)}
              for t, _ in plan}
    return {"shmpool_pool": ours, "process_pool_executor": ppe, "ratios": ratios,
            "what": f"closed loop: each client thread waits for its result before the next call; {workers} "
                    "worker processes in each pool; ProcessPoolExecutor workers attach with shmpool.attach and "
                    "return bytes. With N threads always waiting, mean latency = N / throughput "
                    "(littles_law_mean_us)."}


# ----------------------------------------------------------------------------- targets

def _targets(p: dict) -> dict:
    """Each issue target: shmpool's figure, the peer's, the ratio, the threshold, met or not
    (only the rows whose phases ran, see --phases)."""
    empty = {"shmpool": {}, "lmdb": {}}
    lk = p.get("lookup", empty)
    sp, lm = lk["shmpool"], lk["lmdb"]
    conc, pub, mem, jobs = (p.get(k) for k in ("concurrency", "publish", "memory", "jobs"))

    def row(what, ours, peer, ratio, threshold, met, unit=""):
        return {"what": what, "shmpool": ours, "peer": peer, "ratio": round(ratio, 3), "threshold": threshold,
                "met": bool(met), "unit": unit}

    out = {}
    if "lookup" in p:
        out.update(_lookup_targets(sp, lm, row))
        out.update(_issue22_targets(sp, lm, lk["limit_prebuilt_slice"], row))
    if conc is not None:
        many = next(k for k in conc["shmpool"] if k.endswith("_readers") and not k.startswith("1_"))
        out["readers_per_core_vs_one"] = row(
            f"{many.split('_')[0]} readers: lookups per CPU-second within 10% of one reader (shmpool; peer = "
            "lmdb's own ratio)", conc["shmpool"]["per_core_ratio_many_vs_one"],
            conc["lmdb"]["per_core_ratio_many_vs_one"], conc["shmpool"]["per_core_ratio_many_vs_one"],
            TARGETS["readers_per_core_vs_one"],
            conc["shmpool"]["per_core_ratio_many_vs_one"] >= TARGETS["readers_per_core_vs_one"])
        out["readers_per_core_vs_one_against_interpreter"] = row(
            f"{many.split('_')[0]} readers: the same per-core ratio / the limit function's in the same rounds "
            "(peer = the limit function's own ratio: what CPython's GIL costs those threads)",
            conc["shmpool"]["per_core_ratio_many_vs_one"], conc["limit"]["per_core_ratio_many_vs_one"],
            conc["shmpool"]["per_core_ratio_over_limit"], TARGETS["readers_per_core_vs_one"],
            conc["shmpool"]["per_core_ratio_over_limit"] >= TARGETS["readers_per_core_vs_one"])
    if pub is not None:
        big = max((k for k in pub if k.endswith("MiB")), key=lambda k: int(k[:-3]))
        out.update({
            "crystallize_fraction_of_memcpy_warm": row(
                f"crystallize >= 25% of memcpy bandwidth at {big} (reused pages both)",
                pub[big]["shmpool_crystallize_warm"]["median_ms"], pub[big]["memcpy_warm"]["median_ms"],
                pub[big]["fraction_of_memcpy"]["warm"], TARGETS["crystallize_fraction_of_memcpy"],
                pub[big]["fraction_of_memcpy"]["warm"] >= TARGETS["crystallize_fraction_of_memcpy"], "ms"),
            "crystallize_fraction_of_memcpy_fresh_pages": row(
                f"crystallize >= 25% of memcpy bandwidth at {big} (never-touched pages both)",
                pub[big]["shmpool_crystallize_fresh_pages"]["median_ms"], pub[big]["memcpy_fresh_pages"]["median_ms"],
                pub[big]["fraction_of_memcpy"]["fresh_pages"], TARGETS["crystallize_fraction_of_memcpy"],
                pub[big]["fraction_of_memcpy"]["fresh_pages"] >= TARGETS["crystallize_fraction_of_memcpy"], "ms")})
    if mem is not None:
        limit = TARGETS["pss_ratio_to_data"]
        out.update({
            "pss_delta_ratio_to_data": row(
                f"{mem['shmpool']['readers']} readers: summed whole-PSS growth <= {limit}x data size (peer = "
                "lmdb's ratio)", mem["shmpool"]["ratio_pss_delta_to_data"], mem["lmdb"]["ratio_pss_delta_to_data"],
                mem["shmpool"]["ratio_pss_delta_to_data"], limit, mem["shmpool"]["ratio_pss_delta_to_data"] <= limit),
            "issue22_pss_delta_ratio_to_data": row(
                f"{mem['shmpool']['readers']} readers: summed whole-PSS growth <= "
                f"{TARGETS['pss_ratio_to_data_22']}x data size (issue 22; peer = lmdb's ratio)",
                mem["shmpool"]["ratio_pss_delta_to_data"], mem["lmdb"]["ratio_pss_delta_to_data"],
                mem["shmpool"]["ratio_pss_delta_to_data"], TARGETS["pss_ratio_to_data_22"],
                mem["shmpool"]["ratio_pss_delta_to_data"] <= TARGETS["pss_ratio_to_data_22"]),
            "pss_data_mappings_ratio_to_data": row(
                f"{mem['shmpool']['readers']} readers: PSS of the data mappings <= {limit}x data size (peer = "
                "lmdb's)", mem["shmpool"]["ratio_data_mappings_to_data"], mem["lmdb"]["ratio_data_mappings_to_data"],
                mem["shmpool"]["ratio_data_mappings_to_data"], limit,
                mem["shmpool"]["ratio_data_mappings_to_data"] <= limit)})
    if jobs is not None:
        out.update(_jobs_targets(jobs, row))
    return out


def _lookup_targets(sp: dict, lm: dict, row) -> dict:
    single = sp["single"]["p99_us"]
    batch = TARGETS["batch20_vs_lmdb_one_txn"]
    long_limit = TARGETS["single_lookup_p99_vs_lmdb_long_txn"]
    return {
        "single_lookup_p99_vs_lmdb_long_txn": row(
            f"single lookup p99 <= {long_limit}x py-lmdb get (get inside one long read txn)", single,
            lm["single_long_txn"]["p99_us"], single / lm["single_long_txn"]["p99_us"],
            long_limit, single <= long_limit * lm["single_long_txn"]["p99_us"], "us"),
        "single_lookup_p99_vs_lmdb_fresh_txn": row(
            "single lookup p99 <= 2x py-lmdb get (a fresh read txn per get)", single,
            lm["single_fresh_txn"]["p99_us"], single / lm["single_fresh_txn"]["p99_us"],
            TARGETS["single_lookup_p99_vs_lmdb"], single <= 2 * lm["single_fresh_txn"]["p99_us"], "us"),
        "batch20_median_vs_lmdb_one_txn": row(
            f"batch of 20 <= {batch}x 20 LMDB gets in one txn (median)", sp["batch"]["median_us"],
            lm["batch"]["median_us"], sp["batch"]["median_us"] / lm["batch"]["median_us"],
            batch, sp["batch"]["median_us"] <= batch * lm["batch"]["median_us"], "us"),
        "batch20_p99_vs_lmdb_one_txn": row(
            f"batch of 20 <= {batch}x 20 LMDB gets in one txn (p99)", sp["batch"]["p99_us"], lm["batch"]["p99_us"],
            sp["batch"]["p99_us"] / lm["batch"]["p99_us"], batch,
            sp["batch"]["p99_us"] <= batch * lm["batch"]["p99_us"], "us"),
    }


def _issue22_targets(sp: dict, lm: dict, limit: dict, row) -> dict:
    """Issue 22's read goals, each a ratio of two rows measured in the same process, in turns."""
    single, long_txn, batch = sp["single"], lm["single_long_txn"], sp["batch"]
    goals = [
        ("issue22_lookup_p50_vs_lmdb_long_txn", "median_us", single, long_txn, "lookup_p50_vs_lmdb_long_txn",
         "lookup p50 <= {t}x py-lmdb get in one long txn"),
        ("issue22_lookup_p99_vs_lmdb_long_txn", "p99_us", single, long_txn, "lookup_p99_vs_lmdb_long_txn",
         "lookup p99 <= {t}x py-lmdb get in one long txn"),
        ("issue22_batch20_median_vs_lmdb_one_txn", "median_us", batch, lm["batch"],
         "batch20_median_vs_lmdb_one_txn_22", "batch of 20 <= {t}x 20 LMDB gets in one txn (median)"),
        ("issue22_lookup_p50_vs_limit", "median_ns", single, limit, "lookup_p50_vs_limit",
         "lookup p50 within {t}x of a C call returning a prebuilt memoryview slice (p50, ns, unrounded; "
         "both include the clock pair, machine.clock_overhead_ns)"),
    ]
    out = {}
    for key, stat, ours, peer, target, what in goals:
        t = TARGETS[target]
        ratio = ours[stat] / peer[stat]
        out[key] = row(what.format(t=t), ours[stat], peer[stat], ratio, t, ratio <= t, stat.rpartition("_")[2])
    return out


def _jobs_targets(jobs: dict, row) -> dict:
    top = max(jobs["ratios"], key=int)
    out = {}
    for t in ("1", top):
        ours, ppe = jobs["shmpool_pool"][t], jobs["process_pool_executor"][t]
        out[f"jobs_p50_speedup_vs_ppe_{t}_clients"] = row(
            f"job round trip >= 5x faster than ProcessPoolExecutor, {t} client thread(s) (median; ratio = "
            "ppe / shmpool)", ours["median_us"], ppe["median_us"], ppe["median_us"] / ours["median_us"],
            TARGETS["jobs_speedup_vs_ppe"], ppe["median_us"] >= TARGETS["jobs_speedup_vs_ppe"] * ours["median_us"],
            "us")
    ours = jobs["shmpool_pool"][top]
    out[f"jobs_p99_under_1ms_{top}_clients"] = row(
        f"job round trip p99 < 1 ms at {top} clients (ratio = p99 / 1 ms)", ours["p99_us"],
        jobs["process_pool_executor"][top]["p99_us"], ours["p99_us"] / TARGETS["jobs_p99_us_at_128"],
        TARGETS["jobs_p99_us_at_128"], ours["p99_us"] < TARGETS["jobs_p99_us_at_128"], "us")
    return out


# ----------------------------------------------------------------------------- main

def _load_lmdb(path: Path, reader) -> int:
    env = _lmdb_env(str(path), readonly=False)
    total = 0
    with env.begin(write=True) as txn:
        for d in reader.dimensions():
            for ctx in reader.scan(d):
                txn.put(KEY.pack(d, ctx.layer_id), bytes(ctx.content))
                total += len(ctx.content)
    env.sync(True)
    env.close()
    return total


def main(argv=None) -> int:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test (seconds), not a measurement")
    parser.add_argument("--readers", type=int, default=None,
                        help="reader processes of the memory comparison (default 100; 3 with --quick)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="window of each concurrency row (default 2; 0.2 with --quick)")
    parser.add_argument("--no-harness-warm-up", action="store_true",
                        help="memory: take the baseline before the harness's own numpy code ran (as before issue 22's "
                             "memory work; adds ~10 kB per reader to both systems)")
    parser.add_argument("--phases", default=None,
                        help="comma-separated subset of lookup,concurrency,memory,publish,jobs (default: all)")
    args = parser.parse_args(argv)
    try:
        import lmdb
        import psutil  # noqa: F401
    except ImportError as exc:
        parser.error(f"{exc.name} is missing: install the bench extra (SHMPOOL_EXTRAS=bench scripts/test)")
    if args.quick:
        n, batches, procs, threads, seconds, sizes, rounds = 2000, 200, 2, 4, 0.2, [1], 1
        fresh_repeats, repeats, readers, jobs_n, clients = 1, 2, 3, 100, 8
    else:
        n, batches, procs, threads, seconds, sizes, rounds = 100_000, 5000, 4, 32, 2.0, [1, 16], 3
        fresh_repeats, repeats, readers, jobs_n, clients = 3, 9, 100, 3000, 128
    readers = args.readers if args.readers is not None else readers
    seconds = args.seconds if args.seconds is not None else seconds
    workers = os.cpu_count() or 1
    benchlib.raise_on_sigterm()
    t_start = time.perf_counter()
    name = benchlib.instance_name(PREFIX)
    payload: dict = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
            tmp = Path(tmp)
            os.environ["SHMPOOL_RUNTIME_DIR"] = str(tmp)  # lock files; spawned children inherit it
            data = tmp / "sample"
            build_sample(data)
            with Coordinator(name, data_dir=data, workers=workers) as coord, \
                    mp.get_context("spawn").Manager() as manager:
                with shmpool.attach(name) as reader:
                    keys = [(d, l) for d in reader.dimensions() for l in reader.layer_ids(d)]
                    lmdb_path = tmp / "lmdb"
                    data_bytes = _load_lmdb(lmdb_path, reader)
                    shared = manager.dict({k: bytes(reader.load_layer_context(*k).content) for k in keys})
                others = [os.getpid(), *coord.stats()["workers"]["pids"]]
                payload["config"] = {
                    "lookups": n, "batches": batches, "batch_steps": BATCH_STEPS,
                    "concurrency": f"{procs} processes x {threads} threads", "seconds": seconds,
                    "concurrency_rounds": rounds, "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
                    "publish_MiB": sizes, "publish_repeats": {"fresh_pages": fresh_repeats, "warm": repeats},
                    "memory_readers": readers, "memory_harness_warm_up": not args.no_harness_warm_up,
                    "workers": workers, "job_clients": [1, clients],
                    "quick": args.quick,
                    "lmdb": {"version": ".".join(map(str, lmdb.version())), "py_lmdb": lmdb.__version__,
                             "readahead": False, "buffers": True, "folder": "temporary folder on " +
                             _filesystem(tmp)}}
                payload["data"] = {"dimensions": len({d for d, _ in keys}), "layers": len(keys),
                                   "bytes": data_bytes}
                phases = {
                    "lookup": lambda: compare_lookup(name, str(lmdb_path), shared, keys, n, batches),
                    "concurrency": lambda: compare_concurrency(name, str(lmdb_path), keys, procs, threads, seconds,
                                                               rounds),
                    # Before publish and jobs: nothing but the sample is resident in the pools yet.
                    "memory": lambda: compare_memory(name, str(lmdb_path), keys, data_bytes, readers, others,
                                             not args.no_harness_warm_up),
                    "publish": lambda: compare_publish(coord, tmp, sizes, fresh_repeats, repeats),
                    "jobs": lambda: compare_jobs(coord, workers, keys, jobs_n, clients),
                }
                took = payload["phase_seconds"] = {"setup": round(time.perf_counter() - t_start, 1)}
                wanted = set(args.phases.split(",")) if args.phases else set(phases)
                if wanted - set(phases):
                    parser.error(f"unknown phases {sorted(wanted - set(phases))}")
                for phase, run in phases.items():
                    if phase not in wanted:
                        continue
                    t0 = time.perf_counter()
                    payload[phase] = run()
                    took[phase] = round(time.perf_counter() - t0, 1)
    finally:
        leftovers = benchlib.shm_leftovers()
    payload["targets"] = _targets(payload)
    payload["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    payload["instances"] = benchlib.instance_names()
    payload["leftovers_in_dev_shm"] = leftovers
    benchlib.write_result("bench_peers", payload, args.out_dir, save=not args.no_save)
    return 1 if leftovers else 0


def _filesystem(path: Path) -> str:
    """The mount (device and type) holding ``path``: says whether sync means a disk flush."""
    best = ("?", "?", "")
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                dev, mnt, fstype = line.split()[:3]
                if str(path).startswith(mnt) and len(mnt) >= len(best[2]):
                    best = (dev, fstype, mnt)
    except OSError:
        pass
    return f"{best[0]} ({best[1]}, mounted at {best[2]})"


if __name__ == "__main__":
    sys.exit(main())
