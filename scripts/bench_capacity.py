"""Capacity figures: compression ratio of the sample, what fits in 280 MiB, compressed-lookup and reload cost; prints JSON.

Measured with the real coordinator and allocator:

* the 14-dimension sample's bytes in shared memory, uncompressed and after cold compression
  (zstd level 3, layers >= 256 B that shrink >= 10%), hence how many copies of such data fit in
  the default 280 MiB budget below the 75% warning line and below the 95% refusal line;
* a lookup of an uncompressed layer vs the same layer compressed (the one lookup that copies);
* an evicted dimension's first lookup from another process (request -> reload -> result) vs a
  normal lookup.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402

import shmpool  # noqa: E402
from shmpool.coordinator import Coordinator  # noqa: E402
from shmpool.coordinator.capacity import CapacityPolicy  # noqa: E402
from shmpool.substrate.limits import DEFAULT_LIMIT  # noqa: E402
from shmpool.data.sample import build_sample  # noqa: E402

MiB = 2**20


def _name() -> str:
    return f"bench-cap-{secrets.token_hex(3)}"


def _wait(predicate, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def _lookups(reader, keys, rounds: int) -> list[int]:
    clock = benchlib.clock
    out = []
    load = reader.load_layer_context
    for _ in range(rounds):
        for dim, lid in keys:
            t0 = clock()
            load(dim, lid)
            out.append(clock() - t0)
    return out


def bench_compression(data_dir: Path, rounds: int) -> dict:
    policy = CapacityPolicy(compress_cold=True, cold_after=0.5, sample_interval=0.02, rehydrate_after=10**9)
    name = _name()
    with Coordinator(name, data_dir=data_dir, workers=0, mapped_regions=False, capacity=policy) as coord:
        raw_used = coord.stats()["used_bytes"]
        raw_region_bytes = sum(p["nbytes"] for p in coord.dump_state()["dimensions"])
        with shmpool.attach(name) as reader:
            keys = [(d, lid) for d in reader.dimensions() for lid in reader.layer_ids(d)[::10]]
            plain = _lookups(reader, keys, rounds)
        dims = len(coord.stats()["generations"])
        _wait(lambda: coord.stats()["capacity"]["compressions"] >= dims, 120)
        _wait(lambda: coord.stats()["superseded_pending"] == 0, 30)
        stats = coord.stats()
        packed_used = stats["used_bytes"]
        packed_region_bytes = sum(p["nbytes"] for p in coord.dump_state()["dimensions"])
        with shmpool.attach(name) as reader:
            compressed = _lookups(reader, keys, rounds)
    ratio = raw_region_bytes / packed_region_bytes
    budget_warn, budget_refuse = DEFAULT_LIMIT * 0.75, DEFAULT_LIMIT * 0.95
    return {
        "dimensions": dims,
        "layers_timed": len(keys),
        "uncompressed": {"region_bytes": raw_region_bytes, "used_bytes_in_blocks": raw_used},
        "compressed": {"region_bytes": packed_region_bytes, "used_bytes_in_blocks": packed_used,
                       "compressions": stats["capacity"]["compressions"]},
        "ratio": round(ratio, 3),
        "fits_in_280MiB": {
            "uncompressed_MiB_below_warn": round(budget_warn / MiB, 1),
            "compressed_equivalent_MiB_below_warn": round(budget_warn * raw_used / packed_used / MiB, 1),
            "uncompressed_MiB_below_refuse": round(budget_refuse / MiB, 1),
            "compressed_equivalent_MiB_below_refuse": round(budget_refuse * raw_used / packed_used / MiB, 1),
            "sample_copies_uncompressed": round(budget_refuse / raw_used, 1),
            "sample_copies_compressed": round(budget_refuse / packed_used, 1),
        },
        "lookup_uncompressed": benchlib.percentiles(plain),
        "lookup_compressed": benchlib.percentiles(compressed),
    }


def _first_lookup_after_eviction(name: str, dimension_id: int, layer_id: int, results) -> None:
    with shmpool.attach(name) as reader:
        t0 = benchlib.clock()
        reader.load_layer_context(dimension_id, layer_id)
        first = benchlib.clock() - t0
        t0 = benchlib.clock()
        reader.load_layer_context(dimension_id, layer_id)
        second = benchlib.clock() - t0
    results.put((first, second))


def bench_reload(data_dir: Path, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    firsts, seconds, reload_ms = [], [], []
    name = _name()
    with Coordinator(name, data_dir=data_dir, workers=0, mapped_regions=False, capacity=CapacityPolicy(sample_interval=0.02)) as coord:
        capacity = coord._capacity
        for i in range(repeats):
            dim = 1 + i % 14
            pub = next(p for p in coord._publisher.snapshot()[0] if p.dimension_id == dim)
            capacity.evict(pub)
            results = ctx.Queue()
            proc = ctx.Process(target=_first_lookup_after_eviction, args=(name, dim, 1, results))
            proc.start()
            first, second = results.get(timeout=60)
            proc.join(30)
            firsts.append(first)
            seconds.append(second)
            reload_ms.append(coord.stats()["capacity"]["last_reload_ms"])
    return {
        "repeats": repeats,
        "first_lookup_of_evicted_dimension": benchlib.percentiles(firsts),
        "next_lookup": benchlib.percentiles(seconds),
        "reload_in_coordinator_ms": {"median": round(sorted(reload_ms)[len(reload_ms) // 2], 3),
                                     "max": round(max(reload_ms), 3)},
        "note": "first lookup = reader sees the evicted generation, stores TOUCHED=2 and posts the wake semaphore, the reaper "
                "wakes and reloads the file, the reader sees the new generation (polling every 0.5 ms)",
    }


def main(argv=None) -> int:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    args = parser.parse_args(argv)
    rounds, repeats = (2, 2) if args.quick else (20, 14)
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        os.environ["SHMPOOL_RUNTIME_DIR"] = tmp
        data = Path(tmp) / "sample"
        build_sample(data)
        payload = {"config": {"rounds": rounds, "reload_repeats": repeats, "quick": args.quick},
                   "compression": bench_compression(data, rounds),
                   "eviction_reload": bench_reload(data, repeats)}
    leftovers = [o for e in os.listdir("/dev/shm") if e.startswith("shmpool.bench-cap-") for o in [e]]
    payload["leftovers_in_dev_shm"] = leftovers
    benchlib.write_result("bench_capacity", payload, args.out_dir, save=not args.no_save)
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
