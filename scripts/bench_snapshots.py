"""Snapshot figures: what consistency costs a batch, what a snapshot costs, how fast a wake-up is; prints JSON.

Measured on the 14-dimension sample with the real coordinator, in interleaved rounds (the
machine is shared: peers are measured in the same rounds and compared as ratios):

* ``load_contexts`` of a 20-step path over all 14 dimensions, as shipped (PUBLISH_SEQ read
  before and after the batch) vs the same batch loop without that check (``Reader._batch``, the
  code before snapshots), and one ``load_layer_context`` for scale;
* ``reader.snapshot()`` + ``close()`` (read, pin and re-check all 14 entries), and a snapshot
  plus the first lookup in each of the 14 dimensions (mappings shared with the reader's cache);
* the first lookup through a snapshot of a dimension that has moved on since (maps the old
  generation: a view and its layer index);
* ``wait_generation`` from another process: crystallize() called -> waiter returns, next to the
  duration of that crystallize() call.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402

import shmpool  # noqa: E402
from shmpool.coordinator import Coordinator  # noqa: E402
from shmpool.data.sample import build_sample  # noqa: E402

clock = benchlib.clock


def _path(reader, steps: int = 20) -> list[tuple[int, int]]:
    dims = sorted(reader.dimensions())
    ids = {d: reader.layer_ids(d) for d in dims}
    return [(dims[i % len(dims)], ids[dims[i % len(dims)]][i // len(dims)]) for i in range(steps)]


def _per_call(fn, calls: int) -> list[int]:
    out = []
    for _ in range(calls):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


def bench_batches(reader, rounds: int, calls: int) -> dict:
    path = shmpool.NavigationPath(_path(reader))
    first = path[0]
    checked, unchecked, single = [], [], []
    peers = {
        "checked": lambda: reader.load_contexts(path),
        "unchecked": lambda: reader._batch(path, True),
        "single": lambda: reader.load_layer_context(*first),
    }
    for fn in peers.values():
        _per_call(fn, 200)  # warm: every generation mapped, indexes built
    ratios = []
    for _ in range(rounds):
        c = _per_call(peers["checked"], calls)
        u = _per_call(peers["unchecked"], calls)
        s = _per_call(peers["single"], calls)
        checked += c
        unchecked += u
        single += s
        ratios.append(statistics.median(c) / statistics.median(u))
    return {"path_steps": len(path), "load_contexts": benchlib.percentiles(checked),
            "batch_without_sequence_check": benchlib.percentiles(unchecked),
            "load_layer_context": benchlib.percentiles(single),
            "ratio_checked_to_unchecked_median_of_rounds": round(statistics.median(ratios), 3),
            "ratio_per_round": [round(r, 3) for r in ratios]}


def bench_snapshot(reader, rounds: int, calls: int) -> dict:
    dims = sorted(reader.dimensions())
    firsts = [(d, reader.layer_ids(d)[0]) for d in dims]
    path = shmpool.NavigationPath(_path(reader))

    def take_close():
        reader.snapshot().close()

    def take_and_look():
        with reader.snapshot() as snap:
            for d, lid in firsts:
                snap.load_layer_context(d, lid)

    take, look, batch = [], [], []
    for _ in range(rounds):
        take += _per_call(take_close, calls)
        look += _per_call(take_and_look, calls)
        batch += _per_call(lambda: reader.load_contexts(path), calls)
    return {"dimensions": len(dims), "snapshot_and_close": benchlib.percentiles(take),
            "snapshot_and_one_lookup_per_dimension": benchlib.percentiles(look),
            "load_contexts_same_rounds": benchlib.percentiles(batch),
            "ratio_snapshot_to_load_contexts": round(statistics.median(take) / statistics.median(batch), 2)}


def bench_old_generation(coord, reader, repeats: int) -> dict:
    """First lookup through a snapshot after the dimension moved on: maps the old generation."""
    dim = max(reader.dimensions())
    lid = reader.layer_ids(dim)[0]
    proto_layers = [(c.layer_id, bytes(c.content)) for c in reader.scan(dim)]
    samples = []
    for i in range(repeats):
        snap = reader.snapshot()
        proto = coord.create_proto_dimension(dim, f"moved-{i}")
        for layer_id, content in proto_layers:
            proto.add_layer(layer_id, content)
        coord.crystallize(dim)
        reader.load_layer_context(dim, lid)  # the reader's cache moves on: the snapshot cannot share it
        t0 = clock()
        snap.load_layer_context(dim, lid)
        samples.append(clock() - t0)
        snap.close()
    return {"dimension_id": dim, "layers": len(proto_layers),
            "first_lookup_of_superseded_generation": benchlib.percentiles(samples)}


def _waiter(name: str, dim: int, rounds: int, ready, results) -> None:
    with shmpool.attach(name) as reader:
        g = reader.generation(dim)
        ready.set()
        for _ in range(rounds):
            g = reader.wait_generation(dim, after=g, timeout=30)
            results.put(("ok", time.perf_counter_ns()))


def bench_wake(coord, reader, rounds: int) -> dict:
    dim = min(reader.dimensions())
    layers = [(c.layer_id, bytes(c.content)) for c in reader.scan(dim)][:20]
    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_waiter, args=(coord.name, dim, rounds, ready, results))
    proc.start()
    wake, publish = [], []
    try:
        assert ready.wait(60)
        for i in range(rounds):
            proto = coord.create_proto_dimension(dim, f"wake-{i}")
            for layer_id, content in layers:
                proto.add_layer(layer_id, content)
            time.sleep(0.02)  # the waiter is asleep again, not still returning from the last one
            t0 = time.perf_counter_ns()
            coord.crystallize(dim)
            publish.append(time.perf_counter_ns() - t0)
            kind, woke = results.get(timeout=30)
            wake.append(woke - t0)
    finally:
        proc.join(30)
    return {"rounds": rounds, "crystallize_called_to_waiter_returned": benchlib.percentiles(wake),
            "crystallize_duration": benchlib.percentiles(publish)}


def main(argv=None) -> int:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    args = parser.parse_args(argv)
    rounds, calls, repeats, wakes = (2, 50, 3, 3) if args.quick else (9, 2000, 40, 60)
    benchlib.quiet_logging()
    benchlib.raise_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-snapshots-") as tmp:
        os.environ["SHMPOOL_RUNTIME_DIR"] = tmp
        data = Path(tmp) / "sample"
        build_sample(data)
        name = benchlib.instance_name("bench-snap")
        with Coordinator(name, data_dir=data, workers=0) as coord:
            with shmpool.attach(name) as reader:
                payload = {"config": {"rounds": rounds, "calls_per_round": calls, "quick": args.quick},
                           "batches": bench_batches(reader, rounds, calls),
                           "snapshot": bench_snapshot(reader, rounds, calls // 4),
                           "old_generation": bench_old_generation(coord, reader, repeats),
                           "wait_generation": bench_wake(coord, reader, wakes)}
    payload["leftovers_in_dev_shm"] = benchlib.shm_leftovers()
    benchlib.write_result("bench_snapshots", payload, args.out_dir, save=not args.no_save)
    return 1 if payload["leftovers_in_dev_shm"] else 0


if __name__ == "__main__":
    sys.exit(main())
