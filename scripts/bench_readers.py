"""Reader-side figures of shmpool: lookup, batch, scan, start-up, crystallization, concurrency; prints JSON.

Units: keys ending ``_us`` are microseconds, ``_ms`` milliseconds, ``_ns`` nanoseconds; MB is
10^6 bytes, MiB 2^20. Every figure that has a target carries it and a ``pass`` boolean; the
targets are those of the original task list (layer access < 1 ms, scan < 100 ms, start-up
< 100 ms, crystallization < 10 ms/MB, < 10% degradation with many readers).

* ``single_lookup``: ``load_layer_context`` of a random (dimension, layer) of the 14-dimension
  sample, timed one call at a time in a *separate* spawned process attached with
  ``shmpool.attach`` (never in the coordinator's process); also the loop-amortized cost in ns.
* ``batch_of_20``: one ``load_contexts`` call on a 20-step navigation path of random steps.
* ``scan_one_dimension_200_layers``: ``list(scan(dim))``; ``scan_and_read_200_layers`` also
  runs CRC32 over every byte it returns (what a consumer that reads everything pays).
* ``startup_14_dimensions``: wall time of ``Coordinator(...).start()`` with ``workers=0`` on the
  14 prebuilt region files, repeated; ``stop()`` is timed apart. Components measured alone.
* ``crystallize``: ``Coordinator.crystallize`` of a 1 MiB and a 16 MiB proto-dimension (64 KiB
  layers; also 4 KiB layers), ms per MB, beside numpy ``copyto`` of the same number of bytes.
* ``concurrent_readers``: N reader processes doing lookups for a fixed time; total, per-process
  and per-CPU-second throughput; ``threaded_rows`` spread up to 128 threads over processes.

Every instance is named ``bench-rd-<hex>``; the result lists anything left in /dev/shm.
"""

from __future__ import annotations

import gc
import mmap
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import benchlib  # noqa: E402
from benchlib import clock, percentiles  # noqa: E402

import shmpool  # noqa: E402
from shmpool.coordinator import Coordinator  # noqa: E402
from shmpool._core._lookup import PrebuiltSlice  # noqa: E402
from shmpool.substrate.instance import SharedInstance  # noqa: E402
from shmpool.data.region import Region  # noqa: E402
from shmpool.data.sample import build_sample  # noqa: E402

MB, MiB, KiB = 1e6, 1 << 20, 1 << 10
PREFIX = "bench-rd"
TARGET_LOOKUP_P99_US = 1000.0   # "layer access < 1 ms"
TARGET_BATCH_P99_US = 1000.0    # the single-lookup target applied to the whole batch of 20
TARGET_SCAN_P99_MS = 100.0
TARGET_STARTUP_MS = 100.0
TARGET_CRYSTALLIZE_MS_PER_MB = 10.0
TARGET_DEGRADATION = 0.10       # per-CPU-second throughput within 10% of one reader
BATCH_STEPS = 20
CHILD_TIMEOUT = 300.0


def _time_calls(call, picks, clock):
    """Each call of ``call(dim, lid)`` over ``picks`` timed on its own (ns), then the same picks in
    one timed loop: the per-call cost without the clock's share."""
    gc.collect()
    single = [0] * len(picks)
    for i, (dim, lid) in enumerate(picks):
        t0 = clock()
        call(dim, lid)
        single[i] = clock() - t0
    t0 = clock()
    for dim, lid in picks:
        call(dim, lid)
    return single, (clock() - t0) / len(picks)


# ----------------------------------------------------------------------------- child processes


def _sample_keys(reader) -> list[tuple[int, int]]:
    keys = [(d, lid) for d in reader.dimensions() for lid in reader.layer_ids(d)]
    for dim, lid in keys:  # map every generation once: first-use costs are not lookups
        reader.load_layer_context(dim, lid)
    return keys


def _latency_child(name: str, n: int, batches: int, scans: int, seed: int, results) -> None:
    """Attach, then time single lookups, batches of 20 and scans; put the samples (ns) on ``results``."""
    try:
        rng = random.Random(seed)
        with shmpool.attach(name) as reader:
            keys = _sample_keys(reader)
            load, c = reader.load_layer_context, clock
            picks = [rng.choice(keys) for _ in range(n)]
            single, amortized_ns = _time_calls(load, picks, c)
            # The limit row: a C call of the lookup's shape returning a prebuilt memoryview slice.
            limit = PrebuiltSlice(load(*picks[0]).content).get
            limit_single, limit_amortized_ns = _time_calls(limit, picks, c)

            paths = [shmpool.NavigationPath(rng.choices(keys, k=BATCH_STEPS)) for _ in range(64)]
            load_contexts = reader.load_contexts
            gc.collect()
            batch = [0] * batches
            for i in range(batches):
                path = paths[i % len(paths)]
                t0 = c()
                load_contexts(path)
                batch[i] = c() - t0

            dims = sorted(reader.dimensions())
            scan, scan_read, layers, scanned_bytes = [], [], set(), []
            crc = zlib.crc32
            gc.collect()
            for i in range(scans):
                dim = dims[i % len(dims)]
                t0 = c()
                contexts = list(reader.scan(dim))
                scan.append(c() - t0)
                layers.add(len(contexts))
                del contexts
                t0 = c()
                total = 0
                for ctx in reader.scan(dim):
                    crc(ctx.content)
                    total += len(ctx.content)
                scan_read.append(c() - t0)
                scanned_bytes.append(total)
        results.put(("done", {"single": single, "amortized_ns": amortized_ns, "limit": limit_single,
                              "limit_amortized_ns": limit_amortized_ns, "batch": batch, "scan": scan,
                              "scan_read": scan_read, "layers_per_scan": sorted(layers),
                              "mean_scan_bytes": float(np.mean(scanned_bytes)) if scanned_bytes else 0.0,
                              "pid": os.getpid()}))
    except BaseException as exc:
        results.put(("error", repr(exc)))
        raise


def _throughput_child(name: str, threads: int, seed: int, go, window, results, call: str = "lookup") -> None:
    """Attach, report ready, wait for ``go``, then ``threads`` threads look up until ``window[1]``.

    ``window`` holds (start, end) in ``time.monotonic()`` seconds, the same for every process, so an
    oversubscribed row counts every process over one common interval. ``call`` "limit": the threads
    call the limit row's function (PrebuiltSlice.get) instead, in the same loop: the interpreter's
    own cost of that many threads (GIL hand-offs), with nothing of shmpool's in the call.
    """
    try:
        with shmpool.attach(name) as reader:
            keys = _sample_keys(reader)
            load = reader.load_layer_context
            if call == "limit":
                load = PrebuiltSlice(load(*keys[0]).content).get
            counts, cpu = [0] * threads, [0.0] * threads
            barrier = threading.Barrier(threads + 1)

            def loop(t: int) -> None:
                rng = random.Random(seed * 1000 + t)
                picks = [rng.choice(keys) for _ in range(4096)]
                n = 0
                barrier.wait()
                start, end = window[0], window[1]
                now = time.monotonic
                time.sleep(max(0.0, start - now()))
                cpu0 = time.thread_time()
                while now() < end:
                    for dim, lid in picks[(n & 4095):(n & 4095) + 256]:
                        load(dim, lid)
                    n += 256
                cpu[t] = time.thread_time() - cpu0  # this thread's CPU inside the window only
                counts[t] = n

            pool = [threading.Thread(target=loop, args=(t,), daemon=True) for t in range(threads)]
            for th in pool:
                th.start()
            results.put(("ready", os.getpid()))
            go.wait(CHILD_TIMEOUT)
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            barrier.wait()
            for th in pool:
                th.join()
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
        results.put(("done", {"lookups": sum(counts), "per_thread": counts, "cpu_seconds": sum(cpu),
                              "involuntary_switches": ru1.ru_nivcsw - ru0.ru_nivcsw,
                              "voluntary_switches": ru1.ru_nvcsw - ru0.ru_nvcsw}))
    except BaseException as exc:
        results.put(("error", repr(exc)))
        raise


# ----------------------------------------------------------------------------- benchmarks

def bench_lookups(data: Path, n: int, batches: int, scans: int) -> dict:
    ctx = mp.get_context("spawn")
    name = benchlib.instance_name(PREFIX)
    procs: list = []
    with Coordinator(name, data_dir=data, workers=0):
        try:
            results = ctx.Queue()
            procs = [ctx.Process(target=_latency_child, args=(name, n, batches, scans, 7, results),
                                 name="bench-readers-latency")]
            procs[0].start()
            out = benchlib.collect(results, procs, 1, CHILD_TIMEOUT)[0]
        finally:
            benchlib.reap(procs)
    single, batch = percentiles(out["single"]), percentiles(out["batch"])
    limit = percentiles(out["limit"])
    scan, scan_read = percentiles(out["scan"]), percentiles(out["scan_read"])

    def in_ms(summary: dict) -> dict:
        return {"median_ms": round(summary["median_us"] / 1000, 3), "p99_ms": round(summary["p99_us"] / 1000, 3)}

    return {
        "reader_process": "spawned, attached with shmpool.attach; not the coordinator's process",
        "single_lookup": {
            **single, "amortized_ns": round(out["amortized_ns"], 1),
            "note": "per-call samples include one clock read pair (machine.clock_overhead_ns); amortized_ns "
                    "is one timed loop over the same picks divided by their number",
            "target_p99_us": TARGET_LOOKUP_P99_US, "pass": single["p99_us"] < TARGET_LOOKUP_P99_US},
        "limit_prebuilt_slice": {
            **limit, "amortized_ns": round(out["limit_amortized_ns"], 1),
            "what": "the physical limit of a lookup: a C method of the lookup's shape, get(dimension_id, "
                    "layer_id), returning a memoryview slice made beforehand (shmpool._core._lookup."
                    "PrebuiltSlice), timed over the same picks in the same process",
            "median_ns": float(np.median(out["limit"])), "lookup_median_ns": float(np.median(out["single"])),
            # Unrounded: the two medians differ by tens of ns, and both include the clock pair.
            "lookup_p50_over_limit_p50": round(float(np.median(out["single"]) / np.median(out["limit"])), 3),
            "lookup_amortized_over_limit_amortized": round(out["amortized_ns"] / out["limit_amortized_ns"], 3)},
        "batch_of_20": {
            **batch, "per_step_median_us": round(batch["median_us"] / BATCH_STEPS, 3),
            "target_p99_us": TARGET_BATCH_P99_US, "pass": batch["p99_us"] < TARGET_BATCH_P99_US},
        "scan_one_dimension_200_layers": {
            **scan, **in_ms(scan), "layers_per_scan": out["layers_per_scan"],
            "what": "list(reader.scan(dim)): 200 zero-copy LoadedContexts, no byte read",
            "target_ms": TARGET_SCAN_P99_MS, "pass": scan["p99_us"] / 1000 < TARGET_SCAN_P99_MS},
        "scan_and_read_200_layers": {
            **scan_read, **in_ms(scan_read), "mean_bytes_read": round(out["mean_scan_bytes"]),
            "what": "for ctx in reader.scan(dim): zlib.crc32(ctx.content): every byte of the dimension read",
            "target_ms": TARGET_SCAN_P99_MS, "pass": scan_read["p99_us"] / 1000 < TARGET_SCAN_P99_MS},
    }


def _copy_into_fresh_pages(src: np.ndarray) -> None:
    """Copy ``src`` into a new anonymous mapping: every page faulted in and zeroed on first touch, as
    in a new segment. (np.empty would often get back heap pages glibc already faulted in.)"""
    with mmap.mmap(-1, src.nbytes) as fresh:
        memoryview(fresh)[:] = memoryview(src)


def _startup_components(data: Path, repeats: int) -> dict:
    """The big pieces of start-up, each timed alone (medians, ms)."""
    paths = sorted(p for p in data.iterdir() if p.suffix == ".region")
    segments, validate, copy = [], [], []
    for _ in range(repeats):
        name = benchlib.instance_name(PREFIX)
        t0 = clock()
        inst = SharedInstance.create(name)
        segments.append(clock() - t0)
        inst.destroy()
        t0 = clock()
        for path in paths:
            Region.open(path, verify_checksums=True).close()
        validate.append(clock() - t0)
    total = sum(p.stat().st_size for p in paths)
    src = np.fromfile(paths[0], dtype=np.uint8)
    src = np.resize(src, total)
    for _ in range(repeats):
        t0 = clock()
        _copy_into_fresh_pages(src)
        copy.append(clock() - t0)
    med = lambda xs: round(statistics.median(xs) / 1e6, 2)  # noqa: E731
    return {"create_segments_ms": med(segments), "open_and_verify_crc_14_files_ms": med(validate),
            "memcpy_same_bytes_into_fresh_pages_ms": med(copy)}


def bench_startup(data: Path, repeats: int) -> dict:
    starts, stops, loads = [], [], []
    files = sorted(p for p in data.iterdir() if p.suffix == ".region")
    nbytes = sum(p.stat().st_size for p in files)
    for _ in range(repeats):
        coord = Coordinator(benchlib.instance_name(PREFIX), data_dir=data, workers=0)
        gc.collect()
        t0 = clock()
        coord.start()
        starts.append(clock() - t0)
        try:
            stats = coord.stats()
            assert stats["dimensions"] == len(files), stats["dimensions"]
            loads.append(stats["load_ms"])
        finally:
            t0 = clock()
            coord.stop()
            stops.append(clock() - t0)
    start_ms = [s / 1e6 for s in starts]
    median = statistics.median(start_ms)
    return {
        "what": f"wall time of Coordinator(name, data_dir, workers=0).start() on {len(files)} prebuilt region "
                f"files ({nbytes / MB:.1f} MB, page cache warm): lock file, create the control and pool "
                "segments, allocate, copy every file into shared memory (sendfile), validate the copy (structure; "
                "CRC32 and UTF-8 only on the first start: later ones find the files in the validation cache, "
                "see scripts/bench_startup.py for cold against warm), publish, start the reaper thread; every "
                "dimension readable when it returns. Not included: building the files, Python start-up and "
                "imports, stop() (timed apart). INFO log lines filtered (loguru level WARNING).",
        "files": len(files), "bytes": nbytes, "repeats": repeats,
        "median_ms": round(median, 2), "min_ms": round(min(start_ms), 2), "max_ms": round(max(start_ms), 2),
        "first_ms": round(start_ms[0], 2),
        "coordinator_load_ms_median": round(statistics.median(loads), 2),
        "stop_median_ms": round(statistics.median(stops) / 1e6, 2),
        "components": _startup_components(data, max(3, repeats // 2)),
        "target_ms": TARGET_STARTUP_MS, "pass": median < TARGET_STARTUP_MS,
    }


def _crystallize_size(coord, dim: int, mib: int, layer_bytes: int, repeats: int) -> dict:
    layers = max(1, mib * MiB // layer_bytes)
    rng = np.random.default_rng(mib * 7919 + layer_bytes)
    contents = [rng.integers(0, 256, layer_bytes, dtype=np.uint8).tobytes() for _ in range(min(layers, 64))]
    times, nbytes = [], 0
    for r in range(repeats):
        proto = coord.create_proto_dimension(dim, f"bench-{mib}MiB-{layer_bytes}")
        for lid in range(layers):
            proto.add_layer(lid + 1, contents[lid % len(contents)])
        nbytes = proto.nbytes()
        gc.collect()
        t0 = clock()
        coord.crystallize(dim)
        times.append(clock() - t0)
        time.sleep(0.03)  # let the reaper free the superseded generation (GRACE 10 ms, then a 20 ms tick)
    src = np.frombuffer(b"".join(contents[i % len(contents)] for i in range(layers)), dtype=np.uint8)
    src = np.resize(src, nbytes)
    warm_dst = np.empty_like(src)
    np.copyto(warm_dst, src)
    warm, fresh = [], []
    for _ in range(repeats):
        t0 = clock()
        np.copyto(warm_dst, src)
        warm.append(clock() - t0)
        t0 = clock()
        _copy_into_fresh_pages(src)
        fresh.append(clock() - t0)
    med, warm_med, fresh_med = (statistics.median(x) / 1e6 for x in (times, warm, fresh))
    per_mb = med / (nbytes / MB)
    first_per_mb = times[0] / 1e6 / (nbytes / MB)
    return {
        "layers": layers, "layer_bytes": layer_bytes, "region_bytes": nbytes, "repeats": repeats,
        "median_ms": round(med, 3), "min_ms": round(min(times) / 1e6, 3), "max_ms": round(max(times) / 1e6, 3),
        "first_ms": round(times[0] / 1e6, 3), "first_ms_per_MB": round(first_per_mb, 3),
        "ms_per_MB": round(per_mb, 3), "GB_per_s": round(nbytes / (med / 1e3) / 1e9, 3),
        "memcpy_warm_ms": round(warm_med, 3), "memcpy_warm_GB_per_s": round(nbytes / (warm_med / 1e3) / 1e9, 2),
        "memcpy_fresh_pages_ms": round(fresh_med, 3),
        "times_memcpy_warm": round(med / warm_med, 1),
        "target_ms_per_MB": TARGET_CRYSTALLIZE_MS_PER_MB,
        "pass": max(per_mb, first_per_mb) < TARGET_CRYSTALLIZE_MS_PER_MB,
    }


def bench_crystallize(sizes_mib: list[int], layer_sizes: list[int], repeats: int, empty: Path) -> dict:
    empty.mkdir(exist_ok=True)
    out: dict = {
        "what": "Coordinator.crystallize(dim): allocate, write header + index + every layer into shared memory, "
                "re-parse the region (no CRC check), publish a generation. Filling the proto-dimension "
                "(add_layer, which computes the CRC32s) is not timed. The median is over repeats that reuse the "
                "blocks freed by the previous one (pages already touched); first_ms writes never-touched pages "
                "(compare memcpy_fresh_pages_ms); pass needs both under the target. memcpy_warm: np.copyto of the same "
                "number of bytes into an already-touched buffer; memcpy_fresh_pages: into a new anonymous mapping "
                "(page faults included).",
    }
    with Coordinator(benchlib.instance_name(PREFIX), data_dir=empty, workers=0) as coord:
        for i, layer_bytes in enumerate(layer_sizes):
            rows = {f"{mib}MiB": _crystallize_size(coord, 100 + i * 10 + k, mib, layer_bytes,
                                                   repeats if mib < 16 else max(2, repeats // 2))
                    for k, mib in enumerate(sizes_mib)}
            if i == 0:
                out.update(rows)  # the headline rows: 64 KiB layers
            else:
                out[f"with_{layer_bytes // KiB}KiB_layers"] = rows
    out["pass"] = all(r["pass"] for k, r in out.items() if k.endswith("MiB")) and all(
        r["pass"] for k, v in out.items() if k.startswith("with_") for r in v.values())
    return out


def _machine_busy_seconds() -> float | None:
    """CPU seconds every process of the machine has used since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _throughput_row(ctx, name: str, processes: int, threads: int, seconds: float, call: str = "lookup") -> dict:
    go, results, window = ctx.Event(), ctx.Queue(), ctx.Array("d", 2, lock=False)
    procs = [ctx.Process(target=_throughput_child, args=(name, threads, i, go, window, results, call),
                         name=f"bench-readers-{i}") for i in range(processes)]
    try:
        for p in procs:
            p.start()
        benchlib.collect(results, procs, processes, CHILD_TIMEOUT)  # every one attached, warmed and waiting
        # A common window, opening a little later so that every process is past `go` by then.
        window[0] = time.monotonic() + 0.05 + 0.005 * processes
        window[1] = window[0] + seconds
        busy0 = _machine_busy_seconds()
        go.set()
        reports = benchlib.collect(results, procs, processes, seconds + CHILD_TIMEOUT)
        busy1 = _machine_busy_seconds()
    finally:
        benchlib.reap(procs)
    total = sum(r["lookups"] for r in reports)
    cpu = sum(r["cpu_seconds"] for r in reports)
    per_process = [r["lookups"] / seconds for r in reports]
    per_thread = [c / seconds for r in reports for c in r["per_thread"]]
    return {"readers": processes * threads,  # concurrent readers: every thread of every process
            "call": call, "processes": processes, "threads_per_process": threads, "threads": processes * threads,
            "lookups_per_s": round(total / seconds),
            "per_reader_per_s": round(statistics.mean(per_process)),
            "per_process_min_per_s": round(min(per_process)),
            "per_thread_per_s": round(statistics.mean(per_thread)),
            "per_thread_min_per_s": round(min(per_thread)),
            "cpu_seconds": round(cpu, 3),
            "lookups_per_cpu_second": round(total / cpu) if cpu else None,
            # CPU that anything else on the machine (this script, the coordinator, other programs) used
            # during the row: a busy neighbour shows here before it shows in the figures.
            "others_cpu_seconds": round(busy1 - busy0 - cpu, 2) if None not in (busy0, busy1) else None,
            "involuntary_context_switches": sum(r["involuntary_switches"] for r in reports),
            "voluntary_context_switches": sum(r["voluntary_switches"] for r in reports)}


def _control_rounds(ctx, name: str, thread_rows: list[tuple[int, int]], seconds: float, rounds: int) -> dict:
    """The threaded rows against the interpreter's own cost of them, in ``rounds`` rounds of six
    rows taken in turn (1 reader, p single-threaded processes and p x t threads, each calling the
    lookup and the limit row's function): lookups per CPU-second of p x t threads / 1 reader's,
    beside the same ratio for the limit function, which does nothing of shmpool's (a C call
    returning a prebuilt slice). What the limit ratio loses is CPython's (the GIL: its hand-offs,
    the waiting threads' timed wake-ups, the caches each switch refills); ``ratio_over_control``
    is the lookup's ratio judged against it. The p x 1 rows split off what p processes sharing
    the cores cost without any thread sharing a GIL."""
    out = {}
    for p, t in thread_rows:
        per_round = []
        shapes = {"one": (1, 1), "processes": (p, 1), "threads": (p, t)}
        for _ in range(rounds):
            got = {(call, label): _throughput_row(ctx, name, *shape, seconds, call)
                   for label, shape in shapes.items() for call in ("lookup", "limit")}
            per_s = {key: row["lookups_per_cpu_second"] for key, row in got.items()}
            lookup_ratio = per_s[("lookup", "threads")] / per_s[("lookup", "one")]
            control_ratio = per_s[("limit", "threads")] / per_s[("limit", "one")]
            per_round.append({
                **{f"{call}_per_cpu_second_{label}": per_s[(call, label)] for call, label in got},
                "lookup_ratio": round(lookup_ratio, 3), "control_ratio": round(control_ratio, 3),
                "ratio_over_control": round(lookup_ratio / control_ratio, 3),
                "lookup_ratio_processes": round(per_s[("lookup", "processes")] / per_s[("lookup", "one")], 3),
                "control_ratio_processes": round(per_s[("limit", "processes")] / per_s[("limit", "one")], 3),
                "voluntary_context_switches_threads": [got[(c, "threads")]["voluntary_context_switches"]
                                                       for c in ("lookup", "limit")],
                "others_cpu_seconds": [r["others_cpu_seconds"] for r in got.values()]})
        med = {k: round(statistics.median(r[k] for r in per_round), 3)
               for k in ("lookup_ratio", "control_ratio", "ratio_over_control", "lookup_ratio_processes",
                         "control_ratio_processes")}
        out[f"{p * t}_threads_{p}x{t}"] = {
            **{f"{k}_median": v for k, v in med.items()}, "rounds": per_round,
            "pass": med["lookup_ratio"] >= 1 - TARGET_DEGRADATION,
            "pass_against_control": med["ratio_over_control"] >= 1 - TARGET_DEGRADATION}
    return {"what": " ".join((_control_rounds.__doc__ or "").split()), "rounds": rounds,
            "shapes": out}


def bench_concurrency(data: Path, counts: list[int], thread_rows: list[tuple[int, int]], seconds: float,
                      control_rounds: int = 0) -> dict:
    ctx = mp.get_context("spawn")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with Coordinator(benchlib.instance_name(PREFIX), data_dir=data, workers=0) as coord:
        rows = [_throughput_row(ctx, coord.name, n, 1, seconds) for n in counts]
        threaded = [_throughput_row(ctx, coord.name, p, t, seconds) for p, t in thread_rows]
        control = _control_rounds(ctx, coord.name, thread_rows, seconds, control_rounds) if control_rounds else None
    base = rows[0]
    for row in rows + threaded:
        # Wall-clock per process falls once processes outnumber cores; that is the CPU being shared,
        # not readers contending. Per CPU-second throughput shows contention (cache lines, locks).
        row["per_process_slowdown_vs_1"] = round(1 - row["per_reader_per_s"] / base["per_reader_per_s"], 3)
        row["expected_slowdown_if_cpu_bound"] = round(1 - min(1.0, cores / row["processes"]), 3)
        per_cpu = row["lookups_per_cpu_second"] / base["lookups_per_cpu_second"]
        row["per_cpu_second_slowdown_vs_1"] = round(1 - per_cpu, 3)
        row["total_speedup_vs_1"] = round(row["lookups_per_s"] / base["lookups_per_s"], 2)
        row["pass"] = row["per_cpu_second_slowdown_vs_1"] < TARGET_DEGRADATION
        row["oversubscribed"] = row["threads"] > cores  # more runnable OS threads than cores
    return {
        "seconds_each": seconds, "cores": cores, "rows": rows, "threaded_rows": threaded,
        "what": "each reader process attaches, maps every dimension, then looks up random layers during "
                "one common window of seconds_each (loop overhead included); threads share their process's "
                "GIL, so threads add concurrency, not throughput. Rows with more processes than cores "
                "(oversubscribed: more OS threads than cores) also pay the scheduler: context switches and "
                "cache refills, visible in involuntary_context_switches; in threaded rows a GIL hand-off "
                "wakes a thread that may preempt another process's running thread",
        "target": "lookups per CPU-second within 10% of one reader (no contention between readers); wall "
                  "throughput per process is reported beside what CPU sharing alone would explain",
        "pass": all(r["pass"] for r in rows + threaded),
        "pass_within_cores": all(r["pass"] for r in rows + threaded if not r["oversubscribed"]),
        **({"interpreter_control": control} if control else {}),
    }


# ----------------------------------------------------------------------------- main

def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="write the JSON to this file (default bench-results/bench_readers.json)")
    parser.add_argument("--quick", action="store_true", help="a few iterations of everything: a smoke test")
    parser.add_argument("--lookups", type=int, default=100_000, help="timed single lookups (default 100000)")
    parser.add_argument("--readers", default="1,2,4,8",
                        help="reader process counts, one thread each (default 1,2,4,8)")
    parser.add_argument("--threads", type=int, default=128,
                        help="also run this many reader threads spread over --thread-processes processes "
                             "(default 128; 0 to skip)")
    parser.add_argument("--thread-processes", type=int, default=8,
                        help="processes the --threads are spread over (default 8)")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each concurrency row")
    parser.add_argument("--control-rounds", type=int, default=3,
                        help="rounds of the threaded rows against the limit function's (the interpreter's cost "
                             "of the threads; 6 rows a round; default 3, 0 to skip)")
    parser.add_argument("--phases", default=None,
                        help="comma-separated subset of lookups,startup,crystallize,concurrency (default: all)")
    args = parser.parse_args(argv)
    phases = ("lookups", "startup", "crystallize", "concurrency")
    wanted = set(args.phases.split(",")) if args.phases else set(phases)
    if wanted - set(phases):
        parser.error(f"unknown phases {sorted(wanted - set(phases))}")
    if args.quick:  # a smoke test: every row measured, none long enough to mean much
        # 0.1 s windows: each reader spins for the whole window, so the 5 processes of the
        # concurrency rows are CPU seconds (1.5 s at 0.3) the smoke test learns nothing more from.
        n, batches, scans, repeats, seconds = 2000, 200, 14, 2, 0.1
        sizes, layer_sizes, counts, thread_rows = [1], [64 * KiB], [1, 2], [(2, 4)]
        control_rounds = min(1, args.control_rounds)
    else:
        n, batches, scans, repeats, seconds = args.lookups, 5000, 280, 15, args.seconds
        control_rounds = args.control_rounds
        sizes, layer_sizes = [1, 16], [64 * KiB, 4 * KiB]
        counts = _int_list(args.readers)
        thread_rows = []
        if args.threads > 0:
            procs = max(1, min(args.thread_processes, args.threads))
            thread_rows = [(procs, -(-args.threads // procs))]
    if not counts or counts[0] != 1:
        counts = [1, *[c for c in counts if c != 1]]  # slowdowns are relative to one reader
    benchlib.raise_on_sigterm()
    benchlib.quiet_logging()
    leftovers: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-readers-") as tmp:
        # Lock files go here, not into the shared runtime folder; spawned readers inherit it.
        os.environ["SHMPOOL_RUNTIME_DIR"] = tmp
        data = Path(tmp) / "sample"
        build_sample(data)
        try:
            payload = {
                "config": {"lookups": n, "batches": batches, "scans": scans, "repeats": repeats,
                           "crystallize_MiB": sizes, "crystallize_layer_bytes": layer_sizes,
                           "reader_processes": counts, "threaded_rows": thread_rows,
                           "seconds_each": seconds, "control_rounds": control_rounds, "quick": args.quick,
                           "phases": sorted(wanted), "loadavg_1m_at_start": round(os.getloadavg()[0], 2)},
                "units": "_us microseconds, _ms milliseconds, _ns nanoseconds; MB = 1e6 bytes, MiB = 2^20",
            }
            if "lookups" in wanted:
                payload.update(bench_lookups(data, n, batches, scans))
            if "startup" in wanted:
                payload["startup_14_dimensions"] = bench_startup(data, repeats)
            if "crystallize" in wanted:
                payload["crystallize"] = bench_crystallize(sizes, layer_sizes, repeats, Path(tmp) / "empty")
            if "concurrency" in wanted:
                payload["concurrent_readers"] = bench_concurrency(data, counts, thread_rows, seconds, control_rounds)
        finally:
            leftovers = benchlib.shm_leftovers()
    payload["instances"] = benchlib.instance_names()
    payload["leftovers_in_dev_shm"] = leftovers
    checks = {
        "single_lookup_p99_lt_1ms": "single_lookup",
        "batch_of_20_p99_lt_1ms": "batch_of_20",
        "scan_200_layers_p99_lt_100ms": "scan_one_dimension_200_layers",
        "scan_and_read_200_layers_p99_lt_100ms": "scan_and_read_200_layers",
        "startup_14_dimensions_median_lt_100ms": "startup_14_dimensions",
        "crystallize_lt_10ms_per_MB": "crystallize",
        "concurrent_readers_degradation_lt_10pct": "concurrent_readers",
    }
    payload["target_met"] = {what: payload[key]["pass"] for what, key in checks.items() if key in payload}
    benchlib.write_result("bench_readers", payload, args.out_dir, save=not args.no_save, out_file=args.out)
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
