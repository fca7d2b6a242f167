"""Job round trips: shmpool worker pool vs ProcessPoolExecutor vs Manager().dict(), same run; prints JSON.

The job is the same everywhere: fetch one layer of the 14-dimension sample by (dimension, layer).

* shmpool: ``Client.lookup`` (the built-in ``lookup`` job: a worker resolves it, the result comes
  back as a reference into shared memory and is resolved in the client without a copy);
* ProcessPoolExecutor: ``submit(get_layer, dim, layer).result()``; each worker process attached
  with ``shmpool.attach`` in its initializer and returns the layer's bytes (pickled back, as
  ProcessPoolExecutor does);
* Manager().dict(): ``d[(dim, layer)]`` on a dict holding every layer's bytes (one round trip to
  the manager process per get).

All three run with the same number of worker processes (default: CPU count), first with one
client thread, then with many client threads (default 128) in one process. Round trip =
submit to result in the client thread.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import secrets
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402

import shmpool  # noqa: E402
from coordinator import Coordinator  # noqa: E402
from shmpool.names import list_objects  # noqa: E402
from shmpool.sample import build_sample  # noqa: E402

_reader = None


def _attach(name: str) -> None:
    global _reader
    _reader = shmpool.attach(name)


def get_layer(dimension_id: int, layer_id: int) -> bytes:
    """The ProcessPoolExecutor job: the same lookup, returned as bytes."""
    return bytes(_reader.load_layer_context(dimension_id, layer_id).content)


def _run(call, keys, threads: int, per_thread: int) -> dict:
    """``threads`` client threads each do ``per_thread`` round trips; latency per round trip."""
    clock = benchlib.clock
    latencies: list[list[int]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def client(i: int) -> None:
        rng = random.Random(i)
        mine = latencies[i]
        picks = [rng.choice(keys) for _ in range(per_thread)]
        barrier.wait()
        try:
            for dim, lid in picks:
                t0 = clock()
                call(dim, lid)
                mine.append(clock() - t0)
        except BaseException as exc:  # reported, not swallowed
            errors.append(exc)

    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    flat = [x for lat in latencies for x in lat]
    return {**benchlib.percentiles(flat), "jobs_per_s": round(len(flat) / wall), "threads": threads}


def _shmpool(name: str, keys, thread_counts, per_thread) -> dict:
    out = {}
    with shmpool.connect(name) as client:
        for dim, lid in keys[:200]:  # warm: every worker maps its generations
            client.lookup(dim, lid)
        for threads, n in zip(thread_counts, per_thread):
            out[str(threads)] = _run(lambda d, l: client.lookup(d, l), keys, threads, n)
    return out


def _process_pool(name: str, workers: int, keys, thread_counts, per_thread) -> dict:
    out = {}
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_attach,
                             initargs=(name,)) as ex:
        for dim, lid in keys[:200]:
            ex.submit(get_layer, dim, lid).result()
        for threads, n in zip(thread_counts, per_thread):
            out[str(threads)] = _run(lambda d, l: ex.submit(get_layer, d, l).result(), keys, threads, n)
    return out


def _manager_dict(name: str, keys, thread_counts, per_thread) -> dict:
    out = {}
    with mp.get_context("spawn").Manager() as manager, shmpool.attach(name) as reader:
        shared = manager.dict({(d, l): bytes(reader.load_layer_context(d, l).content) for d, l in keys})
        for threads, n in zip(thread_counts, per_thread):
            out[str(threads)] = _run(lambda d, l: shared[(d, l)], keys, threads, n)
    return out


def main(argv=None) -> int:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--clients", type=int, default=128, help="client threads of the concurrent run")
    args = parser.parse_args(argv)
    if args.quick:
        thread_counts, per_thread = [1, 8], [200, 25]
    else:
        thread_counts, per_thread = [1, args.clients], [5000, max(40, 20000 // args.clients)]
    name = f"bench-jobs-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        os.environ["SHMPOOL_RUNTIME_DIR"] = tmp
        data = Path(tmp) / "sample"
        build_sample(data)
        with Coordinator(name, data_dir=data, workers=args.workers) as coord:
            with shmpool.attach(name) as reader:
                keys = [(d, lid) for d in reader.dimensions() for lid in reader.layer_ids(d)]
            results = {
                "shmpool_pool": _shmpool(name, keys, thread_counts, per_thread),
                "process_pool_executor": _process_pool(name, args.workers, keys, thread_counts, per_thread),
                "manager_dict": _manager_dict(name, keys, thread_counts, per_thread),
            }
            jobs = coord.stats()["jobs"]
    ratios = {}
    for t in map(str, thread_counts):
        ours, ppe = results["shmpool_pool"][t], results["process_pool_executor"][t]
        ratios[t] = {"p50_speedup_vs_ppe": round(ppe["median_us"] / ours["median_us"], 2),
                     "p99_speedup_vs_ppe": round(ppe["p99_us"] / ours["p99_us"], 2),
                     "throughput_ratio_vs_ppe": round(ours["jobs_per_s"] / ppe["jobs_per_s"], 2)}
    top = str(thread_counts[-1])
    payload = {
        "config": {"workers": args.workers, "thread_counts": thread_counts, "round_trips_per_thread": per_thread,
                   "quick": args.quick},
        "results": results,
        "ratios": ratios,
        "targets": {
            "pool_vs_ppe_at_least_5x": ratios[top]["p50_speedup_vs_ppe"] >= 5,
            f"pool_p99_under_1ms_at_{top}_clients": results["shmpool_pool"][top]["p99_us"] < 1000,
        },
        "coordinator_job_counts": jobs,
        "leftovers_in_dev_shm": [o for group in list_objects(name) for o in group],
    }
    benchlib.write_result("bench_jobs", payload, args.out_dir, save=not args.no_save)
    return 1 if payload["leftovers_in_dev_shm"] else 0


if __name__ == "__main__":
    sys.exit(main())
