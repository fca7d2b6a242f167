"""shmpool against what users would pick instead (py-lmdb, Manager().dict(), ProcessPoolExecutor), one run; prints JSON.

Needs the ``bench`` extra (lmdb, psutil): ``SHMPOOL_EXTRAS=bench scripts/test`` installs it.
The 14-dimension sample is loaded into each system, then, in the same run:

1. single layer lookup from an attached reader process: shmpool ``load_layer_context`` vs LMDB
   ``get`` with ``buffers=True`` (zero-copy) in a fresh read transaction and inside one long one,
   vs ``Manager().dict()`` get;
2. a batch of 20 along a navigation path: one ``load_contexts`` call vs one LMDB transaction;
3. 128 concurrent readers (threads over several processes): lookups/s, p99, per-core throughput
   against a single reader;
4. publishing a new version of a 1 MiB and a 16 MiB dimension: ``crystallize`` vs an LMDB write
   transaction putting the same layers (sync=True and sync=False), vs numpy memcpy of the bytes;
5. memory: PSS of the data mappings summed over N attached reader processes (default 100) that
   each touched every page of every layer, vs the data size, for shmpool and LMDB;
6. job round trip through the worker pool vs ProcessPoolExecutor (the same lookup).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import secrets
import statistics
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

import shmpool  # noqa: E402
from coordinator import Coordinator  # noqa: E402
from shmpool.names import list_objects  # noqa: E402
from shmpool.sample import build_sample  # noqa: E402

KEY = struct.Struct(">IQ")  # big-endian: LMDB keeps keys sorted, so one dimension's layers are adjacent
MiB = 2**20
_names: list[str] = []


def _name() -> str:
    name = f"bench-peers-{secrets.token_hex(3)}"
    _names.append(name)
    return name


def _lmdb_env(path: str, readonly: bool = True):
    import lmdb

    return lmdb.open(path, map_size=4 << 30, readonly=readonly, lock=True, max_readers=1024,
                     readahead=False, subdir=True, metasync=not readonly, sync=not readonly)


# ----------------------------------------------------------------------------- reader processes

def _latency_child(system: str, target: str, keys, paths, n: int, batches: int, results) -> None:
    """Single-lookup and batch-of-20 latencies of one system, measured in this fresh process."""
    clock = benchlib.clock
    rng = random.Random(1)
    picks = [rng.choice(keys) for _ in range(n)]
    out: dict = {}
    if system == "shmpool":
        with shmpool.attach(target) as reader:
            load = reader.load_layer_context
            for d, l in keys:
                load(d, l)
            lat = []
            for d, l in picks:
                t0 = clock()
                load(d, l)
                lat.append(clock() - t0)
            out["single"] = lat
            nav = [shmpool.NavigationPath(p) for p in paths]
            lat = []
            for i in range(batches):
                p = nav[i % len(nav)]
                t0 = clock()
                reader.load_contexts(p)
                lat.append(clock() - t0)
            out["batch"] = lat
    elif system == "lmdb":
        env = _lmdb_env(target)
        pk = [KEY.pack(d, l) for d, l in picks]
        with env.begin(buffers=True) as txn:  # warm the page cache mapping
            for d, l in keys:
                bytes(txn.get(KEY.pack(d, l))[:1])
        fresh = []
        for k in pk:
            t0 = clock()
            with env.begin(buffers=True) as txn:
                txn.get(k)
            fresh.append(clock() - t0)
        long_ = []
        with env.begin(buffers=True) as txn:
            get = txn.get
            for k in pk:
                t0 = clock()
                get(k)
                long_.append(clock() - t0)
        batch = []
        bpaths = [[KEY.pack(d, l) for d, l in p] for p in paths]
        for i in range(batches):
            p = bpaths[i % len(bpaths)]
            t0 = clock()
            with env.begin(buffers=True) as txn:
                get = txn.get
                for k in p:
                    get(k)
            batch.append(clock() - t0)
        env.close()
        out = {"single_fresh_txn": fresh, "single_long_txn": long_, "batch": batch}
    elif system == "manager":
        from multiprocessing.managers import BaseManager

        class M(BaseManager):
            pass

        M.register("get_dict")
        manager = M(address=target[0], authkey=target[1])
        manager.connect()
        d = manager.get_dict()
        lat = []
        for k in picks[: max(1, n // 10)]:  # a round trip each: 10x fewer is plenty for the tail
            t0 = clock()
            d.get(k)
            lat.append(clock() - t0)
        out["single"] = lat
    results.put(out)


def _throughput_child(system: str, target: str, keys, threads: int, seconds: float, start, results) -> None:
    """``threads`` threads doing lookups for ``seconds``; lookups, per-lookup latencies, CPU time."""
    clock = benchlib.clock
    done: list[int] = [0] * threads
    lats: list[list[int]] = [[] for _ in range(threads)]
    stop_at = [0.0]
    if system == "shmpool":
        reader = shmpool.attach(target)
        for d, l in keys:
            reader.load_layer_context(d, l)

        def lookup_fn():
            load = reader.load_layer_context
            return lambda k: load(k[0], k[1])
    else:
        env = _lmdb_env(target)
        packed = {k: KEY.pack(*k) for k in keys}

        def lookup_fn():
            def get(k):
                with env.begin(buffers=True) as txn:
                    txn.get(packed[k])
            return get

    def run(i: int) -> None:
        rng = random.Random(i)
        picks = [rng.choice(keys) for _ in range(2048)]
        fn = lookup_fn()
        mine = lats[i]
        count = 0
        while time.perf_counter() < stop_at[0]:
            for k in picks[:64]:
                t0 = clock()
                fn(k)
                mine.append(clock() - t0)
            count += 64
            picks.append(picks.pop(0))
        done[i] = count

    results.put("ready")
    start.wait()
    stop_at[0] = time.perf_counter() + seconds
    cpu0 = time.process_time()
    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    cpu = time.process_time() - cpu0
    sample = [x for lat in lats for x in lat[::max(1, len(lat) // 2000)]]
    if system == "shmpool":
        reader.close()
    else:
        env.close()
    results.put({"lookups": sum(done), "cpu_seconds": cpu, "latencies": sample})


def _pss_child(system: str, target: str, keys, ready, release) -> None:
    """Attach, touch every page of every layer, then stay until told to go (so PSS can be read)."""
    total = 0
    if system == "shmpool":
        reader = shmpool.attach(target)
        held = []
        for d, l in keys:
            ctx = reader.load_layer_context(d, l)
            total += int(np.frombuffer(ctx.content, dtype=np.uint8)[::4096].sum()) if len(ctx.content) else 0
            held.append(ctx)
    else:
        env = _lmdb_env(target)
        txn = env.begin(buffers=True)
        for d, l in keys:
            v = txn.get(KEY.pack(d, l))
            total += int(np.frombuffer(v, dtype=np.uint8)[::4096].sum()) if len(v) else 0
    ready.put(total >= 0)
    release.wait()


# ----------------------------------------------------------------------------- the six comparisons

def compare_latency(name, lmdb_path, manager_target, keys, n, batches) -> dict:
    ctx = mp.get_context("spawn")
    rng = random.Random(5)
    paths = [rng.sample(keys, 20) for _ in range(50)]
    out = {}
    for system, target in (("shmpool", name), ("lmdb", lmdb_path), ("manager", manager_target)):
        results = ctx.Queue()
        p = ctx.Process(target=_latency_child, args=(system, target, keys, paths, n, batches, results))
        p.start()
        out[system] = {k: benchlib.percentiles(v) for k, v in results.get(timeout=600).items()}
        p.join(60)
    return out


def compare_concurrency(name, lmdb_path, keys, processes, threads, seconds) -> dict:
    ctx = mp.get_context("spawn")
    out = {}
    for system, target in (("shmpool", name), ("lmdb", lmdb_path)):
        rows = {}
        for label, nproc, nthreads in (("1_reader", 1, 1), (f"{processes * threads}_readers", processes, threads)):
            start, results = ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=_throughput_child, args=(system, target, keys, nthreads, seconds, start, results))
                     for _ in range(nproc)]
            for p in procs:
                p.start()
            for _ in procs:
                results.get(timeout=300)
            start.set()
            reports = [results.get(timeout=seconds + 300) for _ in procs]
            for p in procs:
                p.join(60)
            lookups = sum(r["lookups"] for r in reports)
            cpu = sum(r["cpu_seconds"] for r in reports)
            rows[label] = {"lookups_per_s": round(lookups / seconds), "lookups_per_cpu_s": round(lookups / cpu),
                           "latency": benchlib.percentiles([x for r in reports for x in r["latencies"]]),
                           "processes": nproc, "threads_each": nthreads}
        one, many = rows["1_reader"], rows[f"{processes * threads}_readers"]
        rows["per_core_ratio_many_vs_one"] = round(many["lookups_per_cpu_s"] / one["lookups_per_cpu_s"], 3)
        out[system] = rows
    return out


def compare_publish(coord: Coordinator, tmp: Path, sizes_mib, repeats) -> dict:
    import lmdb

    out = {}
    payload = np.random.default_rng(3).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()
    for mib in sizes_mib:
        layers = mib * 16
        row: dict = {"layers": layers, "layer_bytes": 64 * 1024}
        times = []
        for _ in range(repeats):
            proto = coord.create_proto_dimension(200 + mib, f"pub{mib}")
            for lid in range(layers):
                proto.add_layer(lid, payload)
            t0 = time.perf_counter()
            coord.crystallize(200 + mib)
            times.append(time.perf_counter() - t0)
            coord.reclaim()
        row["shmpool_crystallize_ms"] = round(statistics.median(times) * 1e3, 3)
        for sync in (True, False):
            path = tmp / f"lmdb-pub-{mib}-{sync}"
            env = lmdb.open(str(path), map_size=4 << 30, sync=sync, metasync=sync)
            times = []
            for r in range(repeats):
                t0 = time.perf_counter()
                with env.begin(write=True) as txn:
                    for lid in range(layers):
                        txn.put(KEY.pack(200 + mib, lid), payload)
                times.append(time.perf_counter() - t0)
            env.close()
            row[f"lmdb_write_txn_ms_sync_{str(sync).lower()}"] = round(statistics.median(times) * 1e3, 3)
        src = np.frombuffer(payload * layers, dtype=np.uint8)
        dst = np.empty_like(src)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            times.append(time.perf_counter() - t0)
        nbytes = layers * len(payload)
        row["memcpy_ms"] = round(statistics.median(times) * 1e3, 3)
        row["shmpool_GB_per_s"] = round(nbytes / (row["shmpool_crystallize_ms"] / 1e3) / 1e9, 3)
        row["memcpy_GB_per_s"] = round(nbytes / (row["memcpy_ms"] / 1e3) / 1e9, 3)
        row["shmpool_fraction_of_memcpy"] = round(row["memcpy_ms"] / row["shmpool_crystallize_ms"], 3)
        out[f"{mib}MiB"] = row
    return out


def compare_pss(name, lmdb_path, keys, data_bytes, readers) -> dict:
    import psutil

    ctx = mp.get_context("spawn")
    out = {}
    for system, target, marker in (("shmpool", name, f"/shmpool.{name}."), ("lmdb", lmdb_path, lmdb_path)):
        ready, release = ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_pss_child, args=(system, target, keys, ready, release)) for _ in range(readers)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=600)
        pss = 0
        for p in procs:
            for m in psutil.Process(p.pid).memory_maps(grouped=True):
                if marker in m.path:
                    pss += m.pss
        release.set()
        for p in procs:
            p.join(60)
        out[system] = {"readers": readers, "pss_bytes_of_data_mappings": pss, "data_bytes": data_bytes,
                       "ratio_to_data": round(pss / data_bytes, 3)}
    return out


def compare_jobs(coord, workers, keys, per_thread, clients) -> dict:
    threads = [1, clients]
    plan = [(1, per_thread), (clients, max(20, per_thread * 4 // clients))]
    ours = bench_jobs.bench_shmpool(coord, keys, plan, None)
    ppe = bench_jobs.bench_process_pool(coord.name, workers, keys, plan)
    return {"shmpool_pool": ours, "process_pool_executor": ppe,
            "ratios": {str(t): {"p50_speedup": round(ppe[str(t)]["median_us"] / ours[str(t)]["median_us"], 2),
                                "p99_speedup": round(ppe[str(t)]["p99_us"] / ours[str(t)]["p99_us"], 2),
                                "throughput_ratio": round(ours[str(t)]["jobs_per_s"] / ppe[str(t)]["jobs_per_s"], 2)}
                       for t in threads}}


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
    parser.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    parser.add_argument("--readers", type=int, default=100, help="reader processes for the PSS comparison")
    args = parser.parse_args(argv)
    try:
        import lmdb  # noqa: F401
        import psutil  # noqa: F401
    except ImportError as exc:
        parser.error(f"{exc.name} is missing: install the bench extra (SHMPOOL_EXTRAS=bench scripts/test)")
    if args.quick:
        n, batches, procs, threads, seconds, sizes, repeats, pss_readers, jobs_n = 2000, 200, 2, 4, 0.3, [1], 2, 3, 100
    else:
        n, batches, procs, threads, seconds, sizes, repeats, pss_readers, jobs_n = (
            100_000, 5000, 4, 32, 3.0, [1, 16], 7, args.readers, 3000)
    workers = os.cpu_count() or 1
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        tmp = Path(tmp)
        os.environ["SHMPOOL_RUNTIME_DIR"] = str(tmp)
        data = tmp / "sample"
        build_sample(data)
        name = _name()
        with Coordinator(name, data_dir=data, workers=workers) as coord:
            with shmpool.attach(name) as reader:
                keys = [(d, l) for d in reader.dimensions() for l in reader.layer_ids(d)]
                lmdb_path = tmp / "lmdb"
                data_bytes = _load_lmdb(lmdb_path, reader)
                manager = mp.get_context("spawn").Manager()
                shared = manager.dict({k: bytes(reader.load_layer_context(*k).content) for k in keys})
            from multiprocessing.managers import BaseManager  # the child reconnects by address

            class _Exposer(BaseManager):
                pass

            _Exposer.register("get_dict", callable=lambda: shared)
            exposer = _Exposer(address=("127.0.0.1", 0), authkey=b"bench-peers")
            exposer.start()
            try:
                payload = {
                    "config": {"lookups": n, "batches": batches, "concurrency": f"{procs} processes x {threads} threads",
                               "seconds": seconds, "publish_MiB": sizes, "repeats": repeats,
                               "pss_readers": pss_readers, "workers": workers, "quick": args.quick,
                               "lmdb": {"version": lmdb.version(), "readahead": False, "buffers": True}},
                    "data": {"dimensions": 14, "layers": len(keys), "bytes": data_bytes},
                    "lookup": compare_latency(name, str(lmdb_path), (exposer.address, b"bench-peers"), keys, n, batches),
                    "concurrency": compare_concurrency(name, str(lmdb_path), keys, procs, threads, seconds),
                    "publish": compare_publish(coord, tmp, sizes, repeats),
                    "memory_pss": compare_pss(name, str(lmdb_path), keys, data_bytes, pss_readers),
                    "jobs": compare_jobs(coord, workers, keys, jobs_n, 128 if not args.quick else 8),
                }
            finally:
                exposer.shutdown()
                manager.shutdown()
    payload["ratios"] = _ratios(payload)
    payload["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    payload["leftovers_in_dev_shm"] = sorted(o for nm in _names for group in list_objects(nm) for o in group)
    benchlib.write_result("bench_peers", payload, args.out_dir, save=not args.no_save)
    return 1 if payload["leftovers_in_dev_shm"] else 0


def _ratios(p: dict) -> dict:
    """shmpool / peer, the figures docs/performance.md leads with (lower is better for times)."""
    lk, lm = p["lookup"]["shmpool"], p["lookup"]["lmdb"]
    conc = p["concurrency"]
    pub = p["publish"]
    big = pub[max(pub, key=lambda k: int(k[:-3]))]
    top = max(p["jobs"]["ratios"], key=int)
    return {
        "single_lookup_p99_vs_lmdb_fresh_txn": round(lk["single"]["p99_us"] / lm["single_fresh_txn"]["p99_us"], 3),
        "single_lookup_p99_vs_lmdb_long_txn": round(lk["single"]["p99_us"] / lm["single_long_txn"]["p99_us"], 3),
        "single_lookup_p99_vs_manager_dict": round(lk["single"]["p99_us"] / p["lookup"]["manager"]["single"]["p99_us"], 4),
        "batch20_median_vs_lmdb_one_txn": round(lk["batch"]["median_us"] / lm["batch"]["median_us"], 3),
        "many_readers_per_core_vs_one_shmpool": conc["shmpool"]["per_core_ratio_many_vs_one"],
        "many_readers_per_core_vs_one_lmdb": conc["lmdb"]["per_core_ratio_many_vs_one"],
        "crystallize_fraction_of_memcpy_largest": big["shmpool_fraction_of_memcpy"],
        "crystallize_vs_lmdb_nosync_largest": round(big["shmpool_crystallize_ms"] / big["lmdb_write_txn_ms_sync_false"], 3),
        "pss_ratio_to_data_shmpool": p["memory_pss"]["shmpool"]["ratio_to_data"],
        "pss_ratio_to_data_lmdb": p["memory_pss"]["lmdb"]["ratio_to_data"],
        "job_round_trip_p50_speedup_vs_ppe_1_client": p["jobs"]["ratios"]["1"]["p50_speedup"],
        f"job_round_trip_p50_speedup_vs_ppe_{top}_clients": p["jobs"]["ratios"][top]["p50_speedup"],
    }


if __name__ == "__main__":
    sys.exit(main())
