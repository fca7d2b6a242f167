"""Every lookup path agrees with the index builder, hash collisions forced (issue 22).

The slot decode is the compiled core's (shmpool/_core/_lookup.pyx), reached through
Reader.load_layer_context, the Reader's batch (its inline step and its fallback),
Snapshot.load_layer_context and its batch, and Generation.lookup. Hypothesis draws layer ids that share home slots (``home + k * slots``, wrapping
past the table's end too) beside arbitrary ones, the coordinator publishes them, and each path
must return every layer's exact bytes, and raise LayerNotFound (or list the step as missing) for
ids that collide with present ones without being present. layer_index.probe must find each id at
the slot build_table gave it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmpool
from shmpool import LayerNotFound
from shmpool.data import layer_index
from shmpool.data.layer_index import SLOT_WORDS

DIM = 77


@st.composite
def colliding_ids(draw) -> tuple[list[int], list[int]]:
    """(present ids, absent ids), most of them sharing a few home slots of the table."""
    n = draw(st.integers(1, 48))
    slots = layer_index.slots_for(n)
    homes = draw(st.lists(st.sampled_from([0, 1, slots // 2, slots - 2, slots - 1]), min_size=1, max_size=3,
                          unique=True))
    multiples = draw(st.lists(st.integers(0, 5000), min_size=2 * n, max_size=2 * n, unique=True))
    pool = [homes[i % len(homes)] + k * slots for i, k in enumerate(multiples)]
    extra = draw(st.lists(st.integers(0, 2**62), max_size=n // 3, unique=True))
    candidates = list(dict.fromkeys(pool + extra))
    present = candidates[:n]
    absent = candidates[n:] + [-1, -slots]
    return present, absent


def _content(layer_id: int) -> bytes:
    return f"layer {layer_id}: ".encode() + (layer_id % 251).to_bytes(1, "little") * (layer_id % 97 + 1)


def _publish(coord, present: list[int]) -> int:
    proto = coord.create_proto_dimension(DIM, "collisions")
    for lid in present:
        proto.add_layer(lid, _content(lid))
    return coord.crystallize(DIM)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=colliding_ids())
def test_every_lookup_path_finds_what_the_index_builder_placed(coord, ids):
    present, absent = ids
    generation = _publish(coord, present)
    expected = {lid: _content(lid) for lid in present}
    with shmpool.attach(coord.name) as reader:
        # A batch first, on a fresh reader (its fallback path), then again once mapped (its inline step).
        first = reader.load_contexts([(DIM, lid) for lid in present])
        assert [bytes(c.content) for c in first] == [expected[lid] for lid in present]
        for lid in present:  # Reader.load_layer_context
            ctx = reader.load_layer_context(DIM, lid)
            assert (ctx.generation, ctx.layer_id, bytes(ctx.content)) == (generation, lid, expected[lid])
            assert ctx.verify()
        batch = reader.load_contexts([(DIM, lid) for lid in present])
        assert [bytes(c.content) for c in batch] == [expected[lid] for lid in present]

        gen = reader._map.dims[DIM].current
        assert gen.generation == generation
        # The builder's placement: probe finds each id exactly at the slot build_table gave it.
        table = np.frombuffer(gen.table, np.int64).reshape(-1, SLOT_WORDS)
        rows = np.frombuffer(gen.rows, layer_index.ROW_DTYPE)
        built, slot_of = layer_index.build_table(rows["layer_id"], rows["start"], rows["end"],
                                                 layer_index.meta_column(rows), len(table))
        assert np.array_equal(built, table)
        for row, lid in enumerate(rows["layer_id"].tolist()):
            assert layer_index.probe(gen.table, gen.mask, lid) == int(slot_of[row]) * SLOT_WORDS
        for lid in present:  # Generation's own lookup
            assert bytes(gen.lookup(lid).content) == expected[lid]

        with reader.snapshot() as snap:  # Snapshot.load_layer_context, and its batch
            for lid in present:
                assert bytes(snap.load_layer_context(DIM, lid).content) == expected[lid]
            assert [bytes(c.content) for c in snap.load_contexts([(DIM, lid) for lid in present])] == \
                   [expected[lid] for lid in present]
            for lid in absent:
                with pytest.raises(LayerNotFound):
                    snap.load_layer_context(DIM, lid)

        for lid in absent:  # a collision with present ids, yet absent: a miss on every path
            with pytest.raises(LayerNotFound):
                reader.load_layer_context(DIM, lid)
            with pytest.raises(LayerNotFound):
                gen.lookup(lid)
            assert layer_index.probe(gen.table, gen.mask, lid) == -1
        lenient = reader.load_contexts([(DIM, lid) for lid in present + absent], strict=False)
        assert [c.layer_id for c in lenient] == present
        assert [m.layer_id for m in lenient.missing] == absent
