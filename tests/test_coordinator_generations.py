"""Explicit, jumping generations (what shmpool.dask needs to publish one number on every host).

The directory used to pick its seqlock slot by parity; a jump (1 -> 4) breaks parity, so the
writer now takes the slot not holding the current generation and the reader looks at both.
"""

from __future__ import annotations

import itertools

import pytest

import _reader_children as children
from _hammer import hammer_while_publishing
from _small_coord import allocation_count, fill
from _waiting import wait_for
import _introspect as peek
from shmpool import GenerationNotNewer, InvalidId
from shmpool.data.region_builder import RegionBuilder


def _publish(coord, dim: int, generation: int | None) -> int:
    fill(coord.create_proto_dimension(dim, "jumpy"), generation or 0)
    return coord.crystallize(dim, generation=generation)


def test_explicit_generations_jump_and_every_lookup_sees_the_one_published(coord):
    reader = coord.reader()
    for generation in (3, 4, 9, 10, 11, 20, 23):  # odd to odd, even to odd, +1 runs, gaps
        assert _publish(coord, 5, generation) == generation
        ctx = reader.load_layer_context(5, 7)
        assert ctx.generation == generation
        assert bytes(ctx.content[:8]) == children._stamp(generation, 7)
        del ctx
    # Without an explicit number the next one follows the last jump.
    fill(coord.create_proto_dimension(5, "jumpy"), 24)
    assert coord.crystallize(5) == 24
    assert reader.load_layer_context(5, 7).generation == 24


def test_a_generation_not_above_the_current_one_is_refused_and_nothing_changes(coord):
    assert _publish(coord, 6, 8) == 8
    used = coord.stats()["used_bytes"]
    fill(coord.create_proto_dimension(6, "jumpy"), 99)
    for stale in (8, 7, 1):  # a refusal keeps the proto-dimension, so it can be retried
        with pytest.raises(GenerationNotNewer) as err:
            coord.crystallize(6, generation=stale)
        assert (err.value.dimension_id, err.value.generation, err.value.current) == (6, stale, 8)
        assert "generation 8" in str(err.value)
    with pytest.raises(InvalidId):
        coord.crystallize(6, generation=9.0)
    coord.reclaim()
    assert coord.stats()["used_bytes"] == used, "a refused publication must leave nothing allocated"
    assert coord.reader().load_layer_context(6, 3).generation == 8
    assert coord.stats()["generations"][6] == 8
    assert coord.crystallize(6, generation=12) == 12


def test_the_publisher_refuses_a_stale_generation_and_frees_its_blocks(coord):
    """The race the coordinator's early check cannot see: the number went stale while placing."""
    assert _publish(coord, 7, 5) == 5
    used = coord.stats()["used_bytes"]
    builder = RegionBuilder(7, "late")
    builder.add_layer(1, b"x" * 100)
    with pytest.raises(GenerationNotNewer):
        peek.publisher(coord).place(builder.nbytes(), builder.write_into, layer_count=1, name="late", source="test",
                        generation=5)
    assert coord.stats()["used_bytes"] == used


def test_readers_never_see_a_torn_or_wrong_generation_across_jumps(coord):
    _publish(coord, 9, 1)
    baseline = allocation_count(coord)
    jumps = itertools.cycle((1, 2, 3, 5))  # both parities, jumps of every size
    last = [1]

    def publish() -> int:
        generation = last[0] + next(jumps)
        assert _publish(coord, 9, generation) == generation
        last[0] = generation
        return generation

    published, stats = hammer_while_publishing(children.hammer, coord.name, 9, publish)
    # hammer checks each layer's stamp against the generation its context reports: a reader
    # that took the wrong slot would see another generation's bytes and count it torn.
    assert all(set(s["generations"]) <= {1, *published} for s in stats)
    wait_for(lambda: coord.stats()["superseded_pending"] == 0, what="superseded generations freed")
    assert allocation_count(coord) == baseline
