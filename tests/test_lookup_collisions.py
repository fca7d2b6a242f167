"""Every lookup path of the compiled core (single, batch, snapshot) against the index builder,
with hash collisions forced: layer ids that share their home slot in the identity-hashed table.

Each example publishes two dimensions of a running coordinator as new generations (some layers
text, some binary, some zstd-compressed, with frequencies and keywords), then checks every
layer and a run of absent ids through ``Reader.load_layer_context``, ``Reader.load_contexts``
(strict and lenient, across both dimensions, and its lazy ``format_for_llm``/``total_bytes``
against the contexts themselves) and a snapshot's two lookups.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from _small_coord import small_coordinator
import shmpool
from shmpool import ContextCollection, LayerNotFound
from shmpool.data import layer_index
from shmpool.data.region_builder import RegionBuilder

A, B = 3, 4
MAX_LAYERS = 40


def _colliding(base: int, shift: int, count: int) -> set[int]:
    """``count`` ids ``base + k * 2**shift``: all share a home slot in any table of at most
    2**shift slots (the identity hash keeps the low bits)."""
    return {base + k * (1 << shift) for k in range(count)}


IDS = st.one_of(
    st.builds(_colliding, st.integers(0, 7), st.integers(7, 40), st.integers(2, MAX_LAYERS)),  # one long chain
    st.builds(lambda a, b: a | b,                                                               # chains + strays
              st.builds(_colliding, st.integers(0, 3), st.integers(8, 20), st.integers(2, 20)),
              st.sets(st.integers(0, 2**63 - 1), max_size=20)),
    st.sets(st.integers(0, 2**63 - 1), min_size=1, max_size=MAX_LAYERS),                        # sparse
)


def _layer(dim: int, lid: int, kind: int) -> tuple[bytes | str, dict]:
    """The content and options of layer ``lid``; ``kind`` picks text, binary or compressed."""
    words = ("river", "stone", "ash", "", "μνήμη")
    options = {"frequency": (lid % 1000) / 7.0, "keywords": [w for w in words[lid % 3:lid % 3 + 2] if w]}
    if kind == 0:
        return f"dimension {dim} layer {lid} · 東京\n" * (1 + lid % 3), options
    if kind == 1:
        return bytes([lid % 251, dim]) * (5 + lid % 17), options
    return b"compressible " * 40 + str(lid).encode(), {**options, "compress": True}


def _publish(coord, tmp_path, dim: int, ids: list[int], kinds: list[int], generation: int) -> dict:
    builder = RegionBuilder(dim, f"dimension-{dim}")
    expected = {}
    for lid, kind in zip(ids, kinds):
        content, options = _layer(dim, lid, kind)
        builder.add_layer(lid, content, **options)
        raw = content.encode() if isinstance(content, str) else content
        expected[lid] = (raw, options["frequency"], tuple(options["keywords"]), isinstance(content, str))
    path = tmp_path / f"{dim}-{generation}.region"
    builder.write(path)
    coord.publish_region_file(path, generation=generation)
    path.unlink()
    return expected


def _check(ctx, dim: int, lid: int, want) -> None:
    raw, frequency, keywords, is_text = want
    assert (ctx.dimension_id, ctx.layer_id) == (dim, lid)
    assert bytes(ctx.content) == raw and len(ctx) == len(raw)
    assert ctx.content.readonly
    assert ctx.frequency == frequency and ctx.keywords == keywords and ctx.is_text == is_text
    assert ctx.verify()
    if is_text:
        assert ctx.text == raw.decode()


@pytest.fixture
def served(instance_name, tmp_path):
    with small_coordinator(instance_name, tmp_path) as coord, shmpool.attach(instance_name) as reader:
        yield coord, reader, tmp_path, iter(range(1, 10**6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids_a=IDS, ids_b=IDS, seed=st.integers(0, 2**32 - 1))
def test_every_lookup_path_agrees_with_the_index_builder_under_forced_collisions(served, ids_a, ids_b, seed):
    coord, reader, tmp_path, generations = served
    rng = random.Random(seed)
    generation = next(generations)
    published = {}
    for dim, ids in ((A, sorted(ids_a)), (B, sorted(ids_b))):
        kinds = [rng.randrange(3) for _ in ids]
        published[dim] = _publish(coord, tmp_path, dim, ids, kinds, generation)
        # The builder's own table: how many ids sit away from their home slot (the premise).
        id_array = np.array(ids, dtype=np.int64)
        table, slot_of = layer_index.build_table(id_array, id_array, id_array, np.arange(len(ids)))
        mask = len(table) - 1
        displaced = int((slot_of != (id_array & mask)).sum())
        event(f"displaced ids: {'none' if not displaced else 'some' if displaced < len(ids) // 2 else 'most'}")
        flat = memoryview(table).cast("B").cast("q")
        for row, lid in enumerate(ids):
            assert layer_index.probe(flat, mask, lid) == slot_of[row] * layer_index.SLOT_WORDS

    absent = {dim: [lid + d for lid in list(published[dim])[:5] for d in (1, 1 << 20, -1) if lid + d >= 0
                    and lid + d < 2**63 and lid + d not in published[dim]] for dim in published}
    steps = [(dim, lid) for dim in published for lid in published[dim]]
    rng.shuffle(steps)

    # Single lookups: every layer, and absent ids in the same probe chains.
    for dim, lid in steps:
        _check(reader.load_layer_context(dim, lid), dim, lid, published[dim][lid])
    for dim, lids in absent.items():
        for lid in lids:
            with pytest.raises(LayerNotFound):
                reader.load_layer_context(dim, lid)

    # A batch across both dimensions, lenient with the absent ids mixed in, then strict.
    mixed = list(steps)
    for dim, lids in absent.items():
        for lid in lids[:3]:
            mixed.insert(rng.randrange(len(mixed) + 1), (dim, lid))
    coll = reader.load_contexts(mixed, strict=False)
    found = [s for s in mixed if s[1] in published[s[0]]]
    assert len(coll) == len(found)
    assert [(m.position, m.dimension_id, m.layer_id) for m in coll.missing] == \
        [(pos, d, l) for pos, (d, l) in enumerate(mixed) if l not in published[d]]
    assert coll.total_bytes == sum(len(published[d][l][0]) for d, l in found)
    lazy_text = coll.format_for_llm()  # from the rows, before any context exists
    for i, (dim, lid) in enumerate(found):
        _check(coll[i], dim, lid, published[dim][lid])
    assert [(c.dimension_id, c.layer_id) for c in coll] == found
    assert lazy_text == ContextCollection(list(coll), list(coll.missing)).format_for_llm()
    if any(absent.values()):
        with pytest.raises(LayerNotFound):
            reader.load_contexts(mixed)
    assert [(c.dimension_id, c.layer_id) for c in reader.load_contexts(steps)] == steps

    # A snapshot: its own lookup and batch paths.
    with reader.snapshot() as snap:
        assert snap.generations == {A: generation, B: generation, **{d: g for d, g in snap.generations.items()
                                                                   if d not in (A, B)}}
        for dim, lid in steps:
            _check(snap.load_layer_context(dim, lid), dim, lid, published[dim][lid])
        batch = snap.load_contexts(mixed, strict=False)
        assert [(c.dimension_id, c.layer_id) for c in batch] == found and len(batch.missing) == len(mixed) - len(found)
        for ctx, (dim, lid) in zip(batch, found):
            _check(ctx, dim, lid, published[dim][lid])
        for dim, lids in absent.items():
            for lid in lids:
                with pytest.raises(LayerNotFound):
                    snap.load_layer_context(dim, lid)
