"""Released LoadedContexts are kept as spares for the next lookups (shmpool/_core/_lookup.pyx,
``_context_of`` and ``_context_release``): a context made from a spare is the new layer's and
nothing of the old one's, and a released context lets go of its generation whether it becomes a
spare or is freed (more than the 64 spares released at once)."""

from __future__ import annotations

import sys

import _reader_children as children
from _small_coord import coord, fill  # noqa: F401  (coord is a fixture)
import shmpool
from shmpool.substrate.layout import CACHE_SHIFT, CacheBit

DIM, LAYERS, SIZE = 9, 40, 700


def _publish(coord, generation: int) -> None:  # noqa: F811
    proto = coord.create_proto_dimension(DIM, "spares")
    fill(proto, generation, layers=LAYERS, size=SIZE, metadata=True)
    coord.crystallize(DIM)


def _expected(generation: int, lid: int) -> bytes:
    return children.stamped_layer(generation, lid, SIZE + lid * 10)


def test_a_context_made_from_a_released_one_shows_only_its_own_layer(coord):  # noqa: F811
    _publish(coord, 1)
    with shmpool.attach(coord.name) as reader:
        first = reader.load_layer_context(DIM, 3)
        kept_view = first.content  # outlives its context, which becomes a spare
        del first
        for round_ in range(3):
            for lid in range(1, LAYERS + 1):
                ctx = reader.load_layer_context(DIM, lid)
                assert (ctx.dimension_id, ctx.layer_id, ctx.generation) == (DIM, lid, 1)
                assert len(ctx) == SIZE + lid * 10
                assert bytes(ctx.content) == _expected(1, lid)
                assert ctx.keywords == ("g1", f"l{lid}") and abs(ctx.frequency - lid / 100) < 1e-12
                del ctx
        # Contexts of a scan and a batch are made from the same spares.
        assert [bytes(c.content) for c in reader.scan(DIM)] == [_expected(1, lid) for lid in range(1, LAYERS + 1)]
        assert [c.layer_id for c in reader.load_contexts([(DIM, 5), (DIM, 2)])] == [5, 2]
        assert bytes(kept_view) == _expected(1, 3)


def test_released_contexts_give_back_their_generation_whether_spared_or_freed(coord):  # noqa: F811
    _publish(coord, 1)
    with shmpool.attach(coord.name) as reader:
        reader.load_layer_context(DIM, 1)
        view = reader._map.dims[DIM]
        gen = view.current
        baseline = sys.getrefcount(gen)
        held = [reader.load_layer_context(DIM, 1 + i % LAYERS) for i in range(200)]  # > 64 spares
        assert sys.getrefcount(gen) == baseline + 200
        del held  # 64 become spares, the rest are freed
        assert sys.getrefcount(gen) == baseline
        del gen  # (a holder too: with it, USERS stays set)
        held = [reader.load_layer_context(DIM, 1 + i % LAYERS) for i in range(200)]
        assert view.cache_word == 1 << CACHE_SHIFT | CacheBit.USERS  # the contexts hold it
        del held
        assert view.cache_word == 1 << CACHE_SHIFT  # the last one cleared USERS
        contents = [reader.load_layer_context(DIM, lid).content for lid in range(1, LAYERS + 1)]
        # A view alone holds the generation; a publish and a reclaim do not take it away.
        _publish(coord, 2)
        coord.reclaim()
        assert [bytes(c) for c in contents] == [_expected(1, lid) for lid in range(1, LAYERS + 1)]
        assert reader.load_layer_context(DIM, 4).generation == 2
        del contents
        coord.reclaim()
        assert {p["generation"] for p in reader.pins() if p["dimension_id"] == DIM} <= {2}
