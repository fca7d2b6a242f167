"""Proto-dimensions and crystallization: generations, pins, reclamation, no torn reads."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import time

import pytest

import _reader_children as children
from _hammer import hammer_while_publishing
from _waiting import wait_for
import shmpool
from shmpool import DimensionNotFound, InvalidLayer, LayerNotFound

from _small_coord import allocation_count, fill


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
    fill(proto, 1, metadata=True)
    assert coord.crystallize(7) == 1
    first = reader.load_layer_context(7, 3)
    assert first.generation == 1 and bytes(first.content[:8]) == children._stamp(1, 3)
    frozen = bytes(first.content)
    fill(coord.create_proto_dimension(7, "seven"), 2, metadata=True)
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
    wait_for(lambda: coord.reclaim() >= 0 and coord.stats()["superseded_pending"] == 0)
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
    fill(coord.create_proto_dimension(8, "eight"), 1, metadata=True)
    coord.crystallize(8)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=children.pin_then_wait, args=(coord.name, 8, 2, ready))
    proc.start()
    assert ready.wait(60)
    fill(coord.create_proto_dimension(8, "eight"), 2, metadata=True)
    coord.crystallize(8)
    time.sleep(0.05)
    coord.reclaim()
    assert coord.stats()["superseded_pending"] == 1, "the live reader's pin must hold generation 1"
    used_with_both = coord.stats()["used_bytes"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    wait_for(lambda: coord.stats()["superseded_pending"] == 0)
    stats = coord.stats()
    assert stats["used_bytes"] < used_with_both and stats["readers_attached"] == 0


def test_readers_never_see_a_torn_layer_during_crystallization(coord):
    fill(coord.create_proto_dimension(9, "nine"), 1, metadata=True)
    coord.crystallize(9)
    baseline = allocation_count(coord)
    generations = iter(range(2, 10**6))

    def publish() -> int:
        generation = next(generations)
        fill(coord.create_proto_dimension(9, "nine"), generation, metadata=True)
        assert coord.crystallize(9) == generation
        return generation

    published, stats = hammer_while_publishing(children.hammer, coord.name, 9, publish)
    assert all(s["lookups"] > 100 for s in stats)
    assert len(published) > 5
    # Readers are gone: every superseded generation must be freed, leaving one live copy.
    wait_for(lambda: coord.stats()["superseded_pending"] == 0)
    assert allocation_count(coord) == baseline


def test_crystallize_unknown_proto_is_a_typed_error(coord):
    with pytest.raises(DimensionNotFound) as err:
        coord.crystallize(42)
    assert err.value.dimension_id == 42
