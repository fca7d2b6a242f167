"""Proto-dimensions and crystallization: generations, pins, reclamation, no torn reads."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import time

import pytest

import _reader_children as children
import shmpool
from shmpool.coordinator import Coordinator
from shmpool import DimensionNotFound, InvalidLayer, LayerNotFound, PoolSpec
from shmpool.data.region_builder import RegionBuilder

KiB, MiB = 1024, 1024 * 1024
POOLS = (PoolSpec(4 * KiB, 4096), PoolSpec(64 * KiB, 256))


@pytest.fixture
def coord(instance_name, tmp_path):
    seed = RegionBuilder(1, "seed")
    seed.add_layer(1, "hello")
    seed.write(tmp_path / "seed.region")
    with Coordinator(instance_name, data_dir=tmp_path, pools=POOLS, memory_limit=64 * MiB, workers=0) as c:
        yield c


def _fill(proto, generation: int, layers: int = 40, size: int = 3000) -> None:
    for lid in range(1, layers + 1):
        proto.add_layer(lid, children.stamped_layer(generation, lid, size + lid * 10),
                        frequency=lid / 100, keywords=(f"g{generation}", f"l{lid}"))


def _wait_until(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_proto_is_readable_through_the_coordinator_before_crystallization(coord):
    proto = coord.create_proto_dimension(20, "fresh")
    proto.add_layer(5, "five", frequency=0.5, keywords=("k",))
    ctx = coord.load_layer_context(20, 5)
    assert ctx.text == "five" and ctx.generation == 0 and ctx.keywords == ("k",) and ctx.verify()
    with shmpool.attach(coord.name) as reader:
        with pytest.raises(DimensionNotFound):
            reader.load_layer_context(20, 5)
    proto.remove_layer(5)
    with pytest.raises(LayerNotFound):
        coord.load_layer_context(20, 5)
    with pytest.raises(InvalidLayer):
        coord.create_proto_dimension(20, "again")


def test_crystallize_publishes_and_replaces_by_generation(coord):
    reader = shmpool.attach(coord.name)
    proto = coord.create_proto_dimension(7, "seven")
    _fill(proto, 1)
    assert coord.crystallize(7) == 1
    first = reader.load_layer_context(7, 3)
    assert first.generation == 1 and bytes(first.content[:8]) == children._stamp(1, 3)
    frozen = bytes(first.content)
    _fill(coord.create_proto_dimension(7, "seven"), 2)
    assert coord.crystallize(7) == 2
    second = reader.load_layer_context(7, 3)
    assert second.generation == 2 and bytes(second.content[:8]) == children._stamp(2, 3)
    # The old context is still pinned: byte-identical, and its region not freed.
    coord.reclaim()
    time.sleep(0.05)
    coord.reclaim()
    assert bytes(first.content) == frozen and first.verify()
    assert coord.stats()["superseded_pending"] == 1
    del first
    gc.collect()
    _wait_until(lambda: coord.reclaim() >= 0 and coord.stats()["superseded_pending"] == 0)
    reader.close()


def test_crystallize_existing_file_dimension_replaces_it(coord):
    proto = coord.create_proto_dimension(1, "seed v2")
    proto.add_layer(1, "hello again")
    with shmpool.attach(coord.name) as reader:
        assert reader.load_layer_context(1, 1).text == "hello"
        assert coord.crystallize(1) == 2
        assert reader.load_layer_context(1, 1).text == "hello again"
        assert reader.dimensions()[1] == "seed v2"


def test_old_generation_is_freed_after_a_pinning_reader_is_killed(coord):
    _fill(coord.create_proto_dimension(8, "eight"), 1)
    coord.crystallize(8)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=children.pin_then_wait, args=(coord.name, 8, 2, ready))
    proc.start()
    assert ready.wait(60)
    _fill(coord.create_proto_dimension(8, "eight"), 2)
    coord.crystallize(8)
    time.sleep(0.05)
    coord.reclaim()
    assert coord.stats()["superseded_pending"] == 1, "the live reader's pin must hold generation 1"
    used_with_both = coord.stats()["used_bytes"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    _wait_until(lambda: coord.stats()["superseded_pending"] == 0)
    stats = coord.stats()
    assert stats["used_bytes"] < used_with_both and stats["readers_attached"] == 0


def test_readers_never_see_a_torn_layer_during_crystallization(coord):
    _fill(coord.create_proto_dimension(9, "nine"), 1)
    coord.crystallize(9)
    baseline = coord.stats()["used_bytes"]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=children.hammer, args=(coord.name, 9, 2.5, results)) for _ in range(3)]
    for p in procs:
        p.start()
    generation = 1
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        generation += 1
        _fill(coord.create_proto_dimension(9, "nine"), generation)
        assert coord.crystallize(9) == generation
        time.sleep(0.01)
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert all(status == "ok" for status, _ in outcomes), outcomes
    stats = [payload for _, payload in outcomes]
    assert sum(s["torn"] for s in stats) == 0
    assert sum(s["kept_changed"] for s in stats) == 0
    assert all(s["lookups"] > 100 for s in stats)
    assert max(len(s["generations"]) for s in stats) > 3, "readers should have crossed generations"
    assert generation > 5
    # Readers are gone: every superseded generation must be freed, leaving one live copy.
    _wait_until(lambda: coord.stats()["superseded_pending"] == 0)
    assert coord.stats()["used_bytes"] == baseline


def test_crystallize_unknown_proto_is_a_typed_error(coord):
    with pytest.raises(DimensionNotFound) as err:
        coord.crystallize(42)
    assert err.value.dimension_id == 42
