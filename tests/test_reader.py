"""The reader API in one process: zero-copy lookups, errors, paths, scans, formatting."""

from __future__ import annotations

import numpy as np
import pytest

import _introspect as peek
import shmpool
from shmpool.coordinator import Coordinator
from shmpool import DimensionNotFound, LayerNotFound
from shmpool.data.context import NavigationPath


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import secrets

    from conftest import TEST_PREFIX
    from shmpool.substrate.names import list_objects
    from shmpool.data.sample import build_sample
    folder = tmp_path_factory.mktemp("sample")
    build_sample(folder)
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"  # module-scoped, so not from the make_name fixture
    # Copied into the pools: the first test looks at pool memory (mapped region files are
    # looked up by every other suite, and in test_coordinator_mapped_regions.py).
    coord = Coordinator(name, data_dir=folder, workers=0, mapped_regions=False).start()
    reader = shmpool.attach(name)
    yield coord, reader
    reader.close()
    coord.stop()
    assert list_objects(name) == ([], [])


def test_lookup_is_a_read_only_view_into_shared_memory(served):
    coord, reader = served
    ctx = reader.load_layer_context(2, 10)
    assert isinstance(ctx.content, memoryview) and ctx.content.readonly
    assert ctx.verify() and ctx.generation == 1 and ctx.dimension_name == "temporal"
    address = np.frombuffer(ctx.content, dtype=np.uint8).__array_interface__["data"][0]
    # The coordinator and the reader map the same pool segments separately in this process: the
    # view lies inside the reader's own mapping (a copy would lie in neither mapping), at the same
    # offset as the bytes in the coordinator's mapping (so it is that pool's memory, not a copy).
    reader_pools, coord_pools = peek.pool_mappings(reader), peek.pool_mappings(coord)
    [(pool, offset)] = [(i, address - r[0]) for i, r in enumerate(reader_pools) if r and r[0] <= address < r[1]]
    assert not any(r and r[0] <= address < r[1] for r in coord_pools)
    in_coordinator = peek.pool_memory(coord, pool)[offset:offset + len(ctx.content)]
    assert in_coordinator.tobytes() == bytes(ctx.content)
    # A byte changed through the coordinator's mapping shows through the reader's view at once.
    first = in_coordinator[0]
    in_coordinator[0] = first ^ 0xFF
    try:
        assert ctx.content[0] == first ^ 0xFF
    finally:
        in_coordinator[0] = first
    with pytest.raises(TypeError):
        ctx.content[0] = 1


def test_metadata_matches_the_region(served):
    _, reader = served
    ctx = reader.load_layer_context(1, 1)
    assert 0 <= ctx.frequency < 1
    assert 1 <= len(ctx.keywords) <= 5
    if ctx.is_text:
        assert all(kw in ctx.text for kw in ctx.keywords)


def test_unknown_ids_raise_typed_errors_naming_what_exists(served):
    _, reader = served
    with pytest.raises(DimensionNotFound) as err:
        reader.load_layer_context(99, 1)
    assert err.value.dimension_id == 99 and 14 in err.value.available
    assert "99" in str(err.value)
    with pytest.raises(LayerNotFound) as err:
        reader.load_layer_context(3, 100_000)
    e = err.value
    assert (e.dimension_id, e.layer_id, e.generation, e.layer_count) == (3, 100_000, 1, 200)
    assert "layer 100000 not found in dimension 3 (generation 1, 200 layers" in str(e)


def test_load_contexts_strict_and_lenient(served):
    _, reader = served
    path = NavigationPath([(1, 1), (2, 2), (3, 3)])
    got = reader.load_contexts(path)
    assert [(c.dimension_id, c.layer_id) for c in got] == list(path)
    assert got.total_bytes == sum(len(c.content) for c in got)
    with pytest.raises(LayerNotFound):
        reader.load_contexts([(1, 1), (1, 9999), (2, 2)])
    lenient = reader.load_contexts([(1, 1), (1, 9999), (77, 1), (2, 2)], strict=False)
    assert [(c.dimension_id, c.layer_id) for c in lenient] == [(1, 1), (2, 2)]
    assert [(m.position, m.dimension_id, m.layer_id) for m in lenient.missing] == [(1, 1, 9999), (2, 77, 1)]
    with pytest.raises(TypeError):
        reader.load_contexts([(1, b"a")])  # a str would be a key


def test_format_for_llm_is_stable_and_ordered_by_path(served):
    _, reader = served
    got = reader.load_contexts([(4, 7), (1, 2)], strict=False)
    text = got.format_for_llm()
    first, second = got
    assert text.startswith(f"[1/2] dimension 4 \"{first.dimension_name}\" · layer 7 · frequency "
                           f"{first.frequency:.3f} · keywords: {', '.join(first.keywords)}\n")
    assert f"\n\n[2/2] dimension 1 \"{second.dimension_name}\" · layer 2 ·" in text
    body = first.text if first.is_text else f"<binary: {len(first.content)} bytes>"
    assert body in text
    assert text == got.format_for_llm()
    missing = reader.load_contexts([(1, 424242)], strict=False).format_for_llm()
    assert missing.startswith("[missing] dimension 1 · layer 424242: ")


def test_scan_all_and_by_keyword(served):
    _, reader = served
    everything = list(reader.scan(5))
    assert len(everything) == 200
    assert [c.layer_id for c in everything] == sorted(c.layer_id for c in everything)
    keyword = everything[0].keywords[0]
    tagged = list(reader.scan(5, keyword))
    assert tagged and all(keyword in c.keywords for c in tagged)
    assert {c.layer_id for c in tagged} == {c.layer_id for c in everything if keyword in c.keywords}
    assert list(reader.scan(5, "no-such-keyword")) == []


def test_introspection(served):
    _, reader = served
    assert reader.generation(1) == 1
    assert len(reader.dimensions()) == 14
    stats = reader.stats()
    assert stats["readers_attached"] >= 1 and stats["generations"][1] == 1
