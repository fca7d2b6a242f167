"""The shared layer index and layer-level copy-on-write: edit_dimension, crystallize of an edit,
reclamation of shared blocks, and readers in other processes throughout."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import _edit_children as children
from _hammer import hammer_while_publishing
from _small_coord import small_coordinator
from _waiting import wait_for
import _introspect as peek
import shmpool
from shmpool import DimensionNotFound, EditConflict, InvalidId, InvalidLayer, LayerNotFound
from shmpool.data import layer_index
from shmpool.data.region_builder import RegionBuilder

DIM = 5


# ----------------------------------------------------------------------------- the index itself

def _table_of(ids: list[int]):
    ids_a = np.array(ids, dtype=np.int64)
    rows = np.arange(len(ids), dtype=np.int64)
    table, slot_of = layer_index.build_table(ids_a, rows * 2, rows * 2 + 1, rows)
    assert sorted(slot_of.tolist()) == sorted(set(slot_of.tolist()))
    return memoryview(table).cast("B").cast("q"), len(table) - 1, layer_index.max_probe(table)


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.sets(st.integers(0, 2**63 - 1), max_size=300),                       # sparse, anywhere
    st.builds(lambda start, n: set(range(start, start + n)), st.integers(0, 2**40), st.integers(0, 300)),
    st.sets(st.integers(0, 64).map(lambda k: k * 4096), max_size=60),       # colliding: multiples of 4096
), st.lists(st.integers(-2**64, 2**64), max_size=50))
def test_shared_index_finds_every_id_and_nothing_else(ids, probes):
    ids = sorted(ids)
    table, mask, longest = _table_of(ids)
    slots = mask + 1
    assert slots > len(ids) and slots & mask == 0 and 0 <= longest < slots
    # As small as the ids allow: half full at most, or smaller with every id at its home slot.
    assert slots >= 2 * len(ids) or (longest == 0 and slots == max(8, 1 << len(ids).bit_length()))
    for row, lid in enumerate(ids):
        for bound in (None, longest):  # every table slot, and the header's bound the core probes with
            j = layer_index.probe(table, mask, lid, bound)
            assert j >= 0 and table[j] == lid and table[j + 1] == row * 2 and table[j + 3] == row
    present = set(ids)
    for lid in probes + [i + slots for i in ids[:20]] + [i + 1 for i in ids[:20]]:
        for bound in (None, longest):  # a miss ends within the bound, whatever run it lands in
            assert (layer_index.probe(table, mask, lid, bound) >= 0) == (lid in present)
    assert layer_index.probe(table, mask, True) == -1 and layer_index.probe(table, mask, 1.0) == -1


def test_a_bad_index_header_is_refused_with_the_fault_named():
    rows = np.zeros(3, dtype=layer_index.ROW_DTYPE)
    rows["layer_id"] = [1, 2, 3]
    buf = bytearray(layer_index.index_nbytes(4, 3))
    layer_index.write_index(memoryview(buf), dimension_id=7, generation=4, name=b"name", rows=rows)
    assert layer_index.read_header(buf, source="t", dimension_id=7, generation=4).layer_count == 3
    with pytest.raises(shmpool.RegionFormatError, match="expected dimension 7 generation 5"):
        layer_index.read_header(buf, source="t", dimension_id=7, generation=5)
    with pytest.raises(shmpool.RegionFormatError, match="bad magic"):
        layer_index.read_header(b"x" * len(buf), source="t", dimension_id=7, generation=4)
    with pytest.raises(shmpool.RegionFormatError, match="do not fill"):
        layer_index.read_header(buf[:-8], source="t", dimension_id=7, generation=4)


# ----------------------------------------------------------------------------- edits

@pytest.fixture
def coord(instance_name, tmp_path):
    builder = RegionBuilder(DIM, "edited")
    for lid in range(1, children.LAYERS + 1):
        builder.add_layer(lid, children.content(1, lid), frequency=lid, keywords=(f"l{lid}", "all"))
    builder.write(tmp_path / "edited.region")
    with small_coordinator(instance_name, tmp_path) as c:
        yield c


def _edit(coord, generation: int) -> int:
    lid = children.edited_layer(generation)
    proto = coord.edit_dimension(DIM)
    proto.add_layer(lid, children.content(generation, lid), frequency=lid, keywords=(f"l{lid}", "all"))
    return coord.crystallize(DIM)


def _live_records(coord) -> set[int]:
    return {a["record"] for a in coord.dump_state()["allocations"]}


def test_an_edit_allocates_only_the_changed_layer_and_the_index(coord):
    used = coord.stats()["used_bytes"]
    records = _live_records(coord)
    assert _edit(coord, 2) == 2
    new = _live_records(coord) - records
    allocations = {a["record"]: a for a in coord.dump_state()["allocations"]}
    assert len(new) == 2, "one allocation for the changed bytes, one for the index"
    ids = range(1, children.LAYERS + 1)  # dense: a table of the smallest power of two above the count
    index = layer_index.index_nbytes(len("edited"), children.LAYERS, layer_index.slots_for_ids(ids))
    assert layer_index.slots_for_ids(ids) == 64
    lid = children.edited_layer(2)
    changed = len(children.content(2, lid)) + len(f"l{lid}\x1fall")  # content, then its keywords
    assert sorted(allocations[r]["nbytes"] for r in new) == sorted([index, changed])
    time.sleep(0.05)
    coord.reclaim()  # generation 1's index goes, its layers stay: generation 2 uses them
    assert _live_records(coord) >= records
    assert coord.stats()["used_bytes"] - used == sum(-(-allocations[r]["nbytes"] // 4096) * 4096 for r in new)


def test_an_edit_reads_as_the_published_generation_plus_its_changes(coord):
    proto = coord.edit_dimension(DIM)
    assert proto.base_generation == 1 and len(proto) == children.LAYERS
    assert bytes(proto.load_layer_context(3).content) == children.content(1, 3)
    assert proto.load_layer_context(3).keywords == ("l3", "all")
    proto.add_layer(3, "new three", keywords=["x"])
    proto.remove_layer(4)
    proto.add_layer(1000, b"")
    assert proto.load_layer_context(3).text == "new three"
    with pytest.raises(LayerNotFound):
        proto.load_layer_context(4)
    assert coord.crystallize(DIM) == 2
    with shmpool.attach(coord.name) as reader:
        ids = reader.layer_ids(DIM)
        assert ids == sorted({*range(1, children.LAYERS + 1), 1000} - {4})
        assert reader.load_layer_context(DIM, 3).text == "new three"
        assert reader.load_layer_context(DIM, 3).keywords == ("x",)
        assert bytes(reader.load_layer_context(DIM, 1000).content) == b""
        with pytest.raises(LayerNotFound) as err:
            reader.load_layer_context(DIM, 4)
        assert err.value.generation == 2
        for lid in (1, 2, 5, children.LAYERS):
            ctx = reader.load_layer_context(DIM, lid)
            assert bytes(ctx.content) == children.content(1, lid) and ctx.verify()
            assert ctx.frequency == lid and ctx.keywords == (f"l{lid}", "all")
        assert [c.layer_id for c in reader.scan(DIM, "all")] == [i for i in ids if i not in (3, 1000)]


def test_edit_bad_inputs_are_typed_errors(coord):
    with pytest.raises(DimensionNotFound) as err:
        coord.edit_dimension(99)
    assert err.value.dimension_id == 99
    with pytest.raises(InvalidId):
        coord.edit_dimension(True)
    proto = coord.edit_dimension(DIM)
    with pytest.raises(InvalidLayer, match="already exists"):
        coord.edit_dimension(DIM)
    with pytest.raises(LayerNotFound) as missing:
        proto.remove_layer(12345)
    assert missing.value.layer_id == 12345
    with pytest.raises(InvalidLayer):
        proto.add_layer(3, 3.5)
    assert bytes(proto.load_layer_context(3).content) == children.content(1, 3), "a refused add changes nothing"
    with pytest.raises(InvalidId):
        proto.add_layer(1.0, b"x")


def test_crystallizing_an_edit_of_a_superseded_generation_is_an_edit_conflict(coord):
    stale = coord.edit_dimension(DIM)
    stale.add_layer(1, b"late")
    other = coord.proto(DIM)
    assert other is stale
    # Someone republishes the dimension meanwhile (a reload from a file would do the same).
    with peek.proto_set_aside(coord, DIM):
        whole = coord.create_proto_dimension(DIM, "edited")
        whole.add_layer(1, b"whole")
        assert coord.crystallize(DIM) == 2
    used = coord.stats()["used_bytes"]
    with pytest.raises(EditConflict) as err:
        coord.crystallize(DIM)
    assert (err.value.dimension_id, err.value.base_generation, err.value.current_generation) == (DIM, 1, 2)
    assert coord.stats()["used_bytes"] == used, "a refused edit leaves nothing allocated"


def test_readers_never_see_a_torn_layer_during_edit_publishes(coord):
    generations = iter(range(2, 10**6))
    published, _ = hammer_while_publishing(children.hammer, coord.name, DIM,
                                           lambda: _edit(coord, next(generations)), pause=0.005)
    generation = published[-1]
    # Readers gone: every superseded generation released; what is left is exactly what the
    # current generation uses (its index, the edits it still reads, the original region).
    wait_for(lambda: coord.stats()["superseded_pending"] == 0)
    current = coord.dump_state()["dimensions"]
    uses = {b["record"] for d in current for b in d["blocks"]}
    assert _live_records(coord) == uses
    with shmpool.attach(coord.name) as reader:
        for lid in range(1, children.LAYERS + 1):
            want = children.content(children.written_at(generation, lid), lid)
            assert bytes(reader.load_layer_context(DIM, lid).content) == want


def test_shared_blocks_are_freed_only_when_the_last_generation_using_them_is_gone(coord):
    """Generation 1's region stays while any generation that reads a layer from it lives: here
    a reader process pins generation 2 (which still reads layer 1 from generation 1's region)
    and is SIGKILLed; only then does the region go."""
    original = _live_records(coord)
    proto = coord.edit_dimension(DIM)
    for lid in range(2, children.LAYERS + 1):  # generation 2 keeps only layer 1 of generation 1
        proto.add_layer(lid, children.content(2, lid))
    assert coord.crystallize(DIM) == 2
    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    holder = ctx.Process(target=children.hold, args=(coord.name, DIM, 1, ready, results))
    holder.start()
    assert ready.wait(120)
    held_generation, held_bytes = results.get(timeout=10)
    assert held_generation == 2 and held_bytes == children.content(1, 1)
    proto = coord.edit_dimension(DIM)
    proto.add_layer(1, children.content(3, 1))  # generation 3 uses nothing of generation 1
    assert coord.crystallize(DIM) == 3
    time.sleep(0.05)
    coord.reclaim()
    # Generation 1 is released (nobody pins it) but its region is not: pinned generation 2 reads it.
    assert original <= _live_records(coord)
    assert coord.stats()["superseded_pending"] == 1
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    wait_for(lambda: coord.stats()["superseded_pending"] == 0)
    assert not original & _live_records(coord), "the region of generation 1 is freed with generation 2"
    with shmpool.attach(coord.name) as reader:
        assert bytes(reader.load_layer_context(DIM, 1).content) == children.content(3, 1)
        assert bytes(reader.load_layer_context(DIM, 7).content) == children.content(2, 7)


def test_an_edited_dimension_is_spilled_whole_and_reloads_in_another_process(coord):
    _edit(coord, 2)
    _edit(coord, 3)
    peek.evict(coord, DIM)  # no file holds an edited generation: spilled
    assert coord.stats()["capacity"]["spills_written"] == 1
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    import _reader_children
    child = ctx.Process(target=_reader_children.read_layers, args=(coord.name, DIM, [1, 15, 22], results))
    child.start()
    status, got = results.get(timeout=120)
    child.join(10)
    assert status == "ok", got
    for lid, crc, ok in got["layers"]:
        assert ok and crc == zlib.crc32(children.content(children.written_at(3, lid), lid))
    assert got["generation"] == 5  # 3 edits in all: 1, 2, 3, evicted 4, reloaded 5
