"""Lookups by str key against lookups by int id, in a reader process; prints JSON.

One dimension of 2,000 keyed and 2,000 int-id layers (and, for one row, a second of the 2,000 ids alone). Each figure is ns per lookup, the best of
``--rounds`` passes over the same list (a Python loop around the call, so it includes the loop):

* ``id``: ``load_layer_context(1, i)`` of 286 ids, 20 times over (the hot path, for reference).
* ``hot_key``: the same for 286 keys: a program that reads its working set of keys again and again.
* ``distinct_keys``: 2,000 different keys once each (more than the reader's cache of recent keys
  holds: every key is hashed).
* ``snapshot_hot_key``, ``batch_hot_key_per_step``: the hot keys through a snapshot and through
  ``load_contexts`` (one path of 286 steps).
* ``absent_key``: absent keys (the probe misses; raising LayerNotFound is most of it).
* ``absent_key_find``, ``absent_id_find``: absent keys and ids through ``Reader.find`` (None, no
  exception).
* ``absent_id_in_run_find``: absent ids whose home slot lies inside the run of the present ids
  (2**20 + i): a probe that walks on to an empty slot crosses the whole run. The index's
  max_probe (layer index version 3) ends it where the farthest present key lies: here, where
  keyed layers share the table, that is about as far (``dense_`` the same in a dimension of
  ids 0..N-1 alone, whose table holds every id at its home slot: one probe).
* ``absent_colliding_key``: keys whose id is a present key's but whose text is not (forced with a
  test-only hash, as tests/test_lookup_key_text.py does): the probe hits, the text compare refuses.

Runs against any tree: keys the tree does not compare are still timed, except the last row.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

N = 2000


def _per_call(fn, items, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for x in items:
            fn(1, x)
        best = min(best, time.perf_counter() - t0)
    return round(best / len(items) * 1e9, 1)


def main(argv=None) -> int:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="passes per figure, the best is kept (default 7)")
    args = parser.parse_args(argv)
    benchlib.quiet_logging()
    import shmpool
    from shmpool.coordinator import Coordinator
    from shmpool.data.region_builder import RegionBuilder
    from shmpool.substrate import ids

    folder = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    builder = RegionBuilder(1, "keys")
    for i in range(N):
        builder.add_layer(f"KEY{i:05d}", f"v{i}" * 8)
        builder.add_layer(i, f"id{i}" * 8)
    builder.write(folder / "keys.region")
    dense = RegionBuilder(2, "ids")
    for i in range(N):
        dense.add_layer(i, f"id{i}" * 8)
    dense.write(folder / "ids.region")
    name = benchlib.instance_name("bench-keys")
    out: dict[str, float] = {}
    with Coordinator(name, data_dir=folder, workers=0), shmpool.attach(name) as reader:
        get = reader.load_layer_context
        hot = [f"KEY{i:05d}" for i in range(0, N, 7)]
        out["id_ns"] = _per_call(get, list(range(0, N, 7)) * 20, args.rounds)
        out["hot_key_ns"] = _per_call(get, hot * 20, args.rounds)
        out["distinct_keys_ns"] = _per_call(get, [f"KEY{i:05d}" for i in range(N)], args.rounds)
        with reader.snapshot() as snap:
            out["snapshot_hot_key_ns"] = _per_call(snap.load_layer_context, hot * 20, args.rounds)
        path = [(1, k) for k in hot]
        out["batch_hot_key_per_step_ns"] = round(_per_call(lambda _, p: reader.load_contexts(p), [path] * 20,
                                                           args.rounds) / len(path), 1)

        def miss(dim, key):
            try:
                get(dim, key)
            except shmpool.LayerNotFound:
                return
            raise AssertionError(f"{key!r} was found")

        out["absent_key_ns"] = _per_call(miss, [k + "#absent" for k in hot] * 20, args.rounds)
        if hasattr(reader, "find"):  # the miss without an exception

            def find_miss(dim, key):
                if reader.find(dim, key) is not None:
                    raise AssertionError(f"{key!r} was found")

            out["absent_key_find_ns"] = _per_call(find_miss, [k + "#absent" for k in hot] * 20, args.rounds)
            out["absent_id_find_ns"] = _per_call(find_miss, list(range(N, N + 286)) * 20, args.rounds)
            in_run = [2**20 + i for i in range(0, N, 7)] * 2
            out["absent_id_in_run_find_ns"] = _per_call(find_miss, in_run, args.rounds)
            out["dense_absent_id_in_run_find_ns"] = _per_call(lambda _, lid: find_miss(2, lid), in_run,
                                                              args.rounds)
        if hasattr(ids, "_blake2b_key_hash"):  # the key text compare: absent keys that collide
            real = ids._blake2b_key_hash
            ids._key_hash = lambda utf8: real(utf8.split(b"#", 1)[0])
            out["absent_colliding_key_ns"] = _per_call(miss, [k + "#absent" for k in hot] * 20, args.rounds)
            ids._key_hash = real
    benchlib.write_result("bench_keys", {"layers": {"keyed": N, "int_ids": N}, "rounds": args.rounds,
                                         "ns_per_lookup": out, "leftovers_in_dev_shm": benchlib.shm_leftovers()},
                          args.out_dir, save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
