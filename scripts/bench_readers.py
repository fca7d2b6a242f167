"""Reader-side figures of shmpool: lookup, batch, scan, start-up, crystallization, concurrency; prints JSON.

Every lookup figure is measured in a *separate* spawned process attached with ``shmpool.attach``,
never in the coordinator's process, on the built-in 14-dimension sample (200 layers each).

* single lookup: ``load_layer_context`` of a random (dimension, layer), median/p99;
* batch of 20 along a navigation path: one ``load_contexts`` call;
* scan of one dimension (200 layers), target < 100 ms;
* start-up: ``Coordinator.start()`` with 14 prebuilt region files, no workers (segments created,
  files validated and copied, every dimension readable), target < 100 ms;
* crystallization of a 1 MiB and a 16 MiB proto-dimension, ms per MB (target < 10), beside numpy
  memcpy of the same bytes;
* concurrent readers: 1, 2, 4, ... reader processes doing lookups for a fixed time; total and
  per-process throughput, and the per-core slowdown against one reader.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import benchlib  # noqa: E402

import shmpool  # noqa: E402
from coordinator import Coordinator  # noqa: E402
from shmpool.names import list_objects  # noqa: E402
from shmpool.sample import build_sample  # noqa: E402

MB = 1e6
_names: list[str] = []


def _name() -> str:
    name = f"bench-rd-{secrets.token_hex(3)}"
    _names.append(name)
    return name


# ----------------------------------------------------------------------------- in the reader process

def _reader_latencies(name: str, n: int, batch_n: int, scans: int, seed: int, results) -> None:
    clock = benchlib.clock
    rng = random.Random(seed)
    with shmpool.attach(name) as reader:
        keys = [(d, lid) for d in reader.dimensions() for lid in reader.layer_ids(d)]
        load = reader.load_layer_context
        for dim, lid in keys:  # map every generation once: first-use costs are not lookups
            load(dim, lid)
        picks = [rng.choice(keys) for _ in range(n)]
        single = []
        for dim, lid in picks:
            t0 = clock()
            load(dim, lid)
            single.append(clock() - t0)
        path = shmpool.NavigationPath(rng.sample(keys, 20))
        batch = []
        for _ in range(batch_n):
            t0 = clock()
            reader.load_contexts(path)
            batch.append(clock() - t0)
        scan = []
        dims = sorted(reader.dimensions())
        for i in range(scans):
            dim = dims[i % len(dims)]
            t0 = clock()
            count = sum(1 for _ in reader.scan(dim))
            scan.append(clock() - t0)
        assert count == 200
    results.put({"single": single, "batch": batch, "scan": scan})


def _throughput_worker(name: str, seconds: float, seed: int, start, results) -> None:
    rng = random.Random(seed)
    with shmpool.attach(name) as reader:
        keys = [(d, lid) for d in reader.dimensions() for lid in reader.layer_ids(d)]
        for dim, lid in keys:
            reader.load_layer_context(dim, lid)
        picks = [rng.choice(keys) for _ in range(4096)]
        load = reader.load_layer_context
        results.put("ready")
        start.wait()
        count = 0
        t_end = time.perf_counter() + seconds
        cpu0 = time.process_time()
        while time.perf_counter() < t_end:
            for dim, lid in picks[:256]:
                load(dim, lid)
            count += 256
            picks.append(picks.pop(0))
        cpu = time.process_time() - cpu0
    results.put({"lookups": count, "cpu_seconds": cpu})


# ----------------------------------------------------------------------------- benchmarks

def bench_lookups(data: Path, n: int, batch_n: int, scans: int) -> dict:
    ctx = mp.get_context("spawn")
    name = _name()
    with Coordinator(name, data_dir=data, workers=0):
        results = ctx.Queue()
        proc = ctx.Process(target=_reader_latencies, args=(name, n, batch_n, scans, 7, results))
        proc.start()
        out = results.get(timeout=600)
        proc.join(60)
    single = benchlib.percentiles(out["single"])
    batch = benchlib.percentiles(out["batch"])
    scan = benchlib.percentiles(out["scan"])
    return {
        "single_lookup": {**single, "target_p99_us": 1000, "aim_p99_us": 50,
                          "pass": single["p99_us"] < 1000},
        "batch_of_20": {**batch, "per_step_median_us": round(batch["median_us"] / 20, 3)},
        "scan_one_dimension_200_layers": {**scan, "median_ms": round(scan["median_us"] / 1000, 3),
                                          "p99_ms": round(scan["p99_us"] / 1000, 3), "target_ms": 100,
                                          "pass": scan["p99_us"] / 1000 < 100},
    }


def bench_startup(data: Path, repeats: int) -> dict:
    loads, starts = [], []
    for _ in range(repeats):
        with Coordinator(_name(), data_dir=data, workers=0) as coord:
            stats = coord.stats()
            loads.append(stats["load_ms"])
            starts.append(stats["startup_ms"])
            assert stats["dimensions"] == 14
    return {
        "what": "Coordinator.start() with 14 prebuilt region files (31.6 MB), workers=0: create segments, "
                "open + validate (checksums) + copy every file, publish; every dimension readable after",
        "median_ms": round(statistics.median(starts), 2), "max_ms": round(max(starts), 2),
        "load_median_ms": round(statistics.median(loads), 2), "repeats": repeats,
        "target_ms": 100, "pass": statistics.median(starts) < 100,
    }


def bench_crystallize(sizes_mib: list[int], repeats: int, empty: Path) -> dict:
    out = {}
    name = _name()
    empty.mkdir(exist_ok=True)
    with Coordinator(name, data_dir=empty, workers=0) as coord:
        for mib in sizes_mib:
            layers = max(1, mib * 16)  # 64 KiB layers
            payload = np.random.default_rng(mib).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()
            times = []
            nbytes = 0
            for r in range(repeats):
                proto = coord.create_proto_dimension(100 + mib, f"bench-{mib}MiB")
                for lid in range(layers):
                    proto.add_layer(lid, payload)
                nbytes = proto.nbytes()
                t0 = time.perf_counter()
                coord.crystallize(100 + mib)
                times.append(time.perf_counter() - t0)
                coord.reclaim()
            src = np.frombuffer(payload * layers, dtype=np.uint8)
            dst = np.empty_like(src)
            copies = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                np.copyto(dst, src)
                copies.append(time.perf_counter() - t0)
            med = statistics.median(times)
            copy = statistics.median(copies)
            out[f"{mib}MiB"] = {
                "region_bytes": nbytes, "median_ms": round(med * 1e3, 3), "max_ms": round(max(times) * 1e3, 3),
                "ms_per_MB": round(med * 1e3 / (nbytes / MB), 3),
                "GB_per_s": round(nbytes / med / 1e9, 3),
                "memcpy_ms": round(copy * 1e3, 3), "memcpy_GB_per_s": round(nbytes / copy / 1e9, 3),
                "fraction_of_memcpy": round(copy / med, 3),
                "target_ms_per_MB": 10, "pass": med * 1e3 / (nbytes / MB) < 10,
            }
    return out


def bench_concurrency(data: Path, counts: list[int], seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    name = _name()
    rows = []
    with Coordinator(name, data_dir=data, workers=0):
        for n in counts:
            start, results = ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=_throughput_worker, args=(name, seconds, i, start, results))
                     for i in range(n)]
            for p in procs:
                p.start()
            for _ in procs:
                assert results.get(timeout=120) == "ready"
            start.set()
            reports = [results.get(timeout=seconds + 120) for _ in procs]
            for p in procs:
                p.join(60)
            total = sum(r["lookups"] for r in reports)
            cpu = sum(r["cpu_seconds"] for r in reports)
            rows.append({"readers": n, "lookups_per_s": round(total / seconds),
                         "per_reader_per_s": round(total / seconds / n),
                         "lookups_per_cpu_second": round(total / cpu) if cpu else None})
    base = rows[0]["lookups_per_cpu_second"]
    for row in rows:
        row["per_core_slowdown"] = round(1 - row["lookups_per_cpu_second"] / base, 3) if base else None
    cores = os.cpu_count() or 1
    return {"seconds_each": seconds, "cores": cores, "rows": rows,
            "target": "per-core throughput within 10% of one reader",
            "pass": all(r["per_core_slowdown"] is not None and r["per_core_slowdown"] < 0.10 for r in rows)}


def main(argv=None) -> int:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    parser.add_argument("--readers", default="1,2,4,8,16,128",
                        help="reader process counts for the concurrency run (default 1,2,4,8,16,128)")
    args = parser.parse_args(argv)
    if args.quick:
        n, batch_n, scans, repeats, sizes, counts, seconds = 2000, 200, 14, 2, [1], [1, 2], 0.3
    else:
        n, batch_n, scans, repeats, sizes, seconds = 100_000, 5000, 140, 10, [1, 16], 2.0
        counts = [int(c) for c in args.readers.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-readers-") as tmp:
        os.environ["SHMPOOL_RUNTIME_DIR"] = tmp
        data = Path(tmp) / "sample"
        build_sample(data)
        payload = {
            "config": {"lookups": n, "batches": batch_n, "scans": scans, "repeats": repeats, "quick": args.quick},
            **bench_lookups(data, n, batch_n, scans),
            "startup_14_dimensions": bench_startup(data, repeats),
            "crystallize": bench_crystallize(sizes, repeats, Path(tmp) / "empty"),
            "concurrent_readers": bench_concurrency(data, counts, seconds),
        }
    leftovers = sorted(o for name in _names for group in list_objects(name) for o in group)
    payload["leftovers_in_dev_shm"] = leftovers
    benchlib.write_result("bench_readers", payload, args.out_dir, save=not args.no_save)
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
