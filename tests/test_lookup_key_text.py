"""A lookup by key compares the key's text: an absent key whose id collides with a present key's
is LayerNotFound, never the other layer's bytes.

Collisions are forced with tests/_key_collide.py: ``"AAPL#x"`` hashes as ``"AAPL"`` in every
process of the test (builders, the coordinator, readers, workers). The text compare under test is
the compiled core's (shmpool/_core/_lookup.pyx), reached through the reader's, the snapshot's and
the batch's own entry points; the property test at the end checks all of them against a model.
"""

from __future__ import annotations

import multiprocessing as mp
import struct
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import _key_collide
import shmpool
from _small_coord import small_coordinator
from shmpool import InvalidLayer, LayerNotFound, RegionFormatError, key_id
from shmpool.coordinator import Coordinator
from shmpool.data import region as region_format
from shmpool.data.region import Region
from shmpool.data.region_builder import RegionBuilder
from shmpool.substrate.ids import LayerKey


@pytest.fixture(autouse=True)
def colliding_keys(monkeypatch):
    monkeypatch.setattr(shmpool.substrate.ids, "_key_hash", _key_collide.colliding_hash)
    assert key_id("AAPL#evil") == key_id("AAPL") != key_id("MSFT")


def _prices(tmp_path, dim: int = 1) -> None:
    builder = RegionBuilder(dim, "prices")
    builder.add_layer("AAPL", "187.2", keywords=["tech"])
    builder.add_layer("MSFT", b"\x00402.1", compress=False)
    builder.add_layer("GOOG", "x" * 4000, compress=True)  # a compressed keyed layer: the inflate path
    builder.add_layer(7, "an id")
    builder.write(tmp_path / "prices.region")


def _assert_misses(lookup, dim, key: str) -> None:
    with pytest.raises(LayerNotFound):
        lookup(dim, key)


def test_an_absent_colliding_key_is_not_found_on_every_reader_path(instance_name, tmp_path):
    _prices(tmp_path)
    with small_coordinator(instance_name, tmp_path), shmpool.attach(instance_name) as reader:
        assert reader.get("prices", "AAPL").text == "187.2"
        assert reader.get("prices", "GOOG").text == "x" * 4000
        assert bytes(reader.get(1, "MSFT").content) == b"\x00402.1"
        for absent in ("AAPL#evil", "GOOG#evil", "MSFT#"):
            with pytest.raises(LayerNotFound) as err:
                reader.get("prices", absent)
            assert repr(absent) in str(err.value)
            _assert_misses(reader.load_layer_context, 1, absent)
        # The bare key id still finds the keyed layer: the id is the layer's, the text a key's.
        assert reader.load_layer_context(1, key_id("AAPL")).text == "187.2"
        # Batches: the inline step (plain layer), the single-lookup fallback (compressed).
        steps = [(1, "AAPL"), (1, "AAPL#evil"), (1, 7), (1, "GOOG#evil"), (1, "GOOG")]
        batch = reader.load_contexts(steps, strict=False)
        assert [c.text for c in batch] == ["187.2", "an id", "x" * 4000]
        assert [m.position for m in batch.missing] == [1, 3]
        with pytest.raises(LayerNotFound):
            reader.load_contexts(steps)
        with reader.snapshot() as snap:
            assert snap.load_layer_context(1, "AAPL").text == "187.2"
            _assert_misses(snap.load_layer_context, 1, "AAPL#evil")
            _assert_misses(snap.load_layer_context, 1, "GOOG#evil")
            got = snap.load_contexts(steps, strict=False)
            assert len(got) == 3 and [m.position for m in got.missing] == [1, 3]


def test_a_second_process_tells_colliding_keys_apart(instance_name, tmp_path):
    _prices(tmp_path)
    with Coordinator(instance_name, data_dir=tmp_path, workers=0):
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        proc = ctx.Process(target=_key_collide.read_in_child,
                           args=(instance_name, "prices", "AAPL", "AAPL#evil", results))
        proc.start()
        assert results.get(timeout=60) == ("187.2", "LayerNotFound", 0, 1)
        proc.join(30)
        assert proc.exitcode == 0


def test_a_layer_added_by_the_bare_id_of_a_key_is_not_found_by_that_key(instance_name, tmp_path):
    builder = RegionBuilder(1, "prices")
    builder.add_layer(key_id("AAPL"), "no key text")
    builder.add_layer("", "the empty key")
    builder.write(tmp_path / "prices.region")
    with small_coordinator(instance_name, tmp_path), shmpool.attach(instance_name) as reader:
        _assert_misses(reader.get, "prices", "AAPL")
        assert reader.load_layer_context(1, key_id("AAPL")).text == "no key text"
        assert reader.get("prices", "").text == "the empty key"
        _assert_misses(reader.get, "prices", "#")  # hashes as "", its text is not ""


def test_region_files_keep_key_text_and_compare_it(tmp_path):
    _prices(tmp_path)
    with Region.open(tmp_path / "prices.region") as region:
        row = region.row(LayerKey("AAPL"))
        assert region.key(row) == "AAPL" and region.key(region.row(7)) is None
        assert bytes(region.layer("AAPL")) == b"187.2" and "AAPL" in region
        assert "AAPL#evil" not in region and LayerKey("AAPL#evil") not in region
        with pytest.raises(LayerNotFound):
            region.layer("AAPL#evil")


def _as_version_1(path) -> None:
    """Rewrite the region file at ``path`` as if version 1 had written it (version field, meta CRC)."""
    raw = bytearray(path.read_bytes())
    at = region_format.HEADER_OFFSETS
    struct.pack_into("<H", raw, at["version"], 1)
    h = region_format.Header._make(region_format.HEADER.unpack_from(raw, 0))
    meta_end = region_format.HEADER_SIZE + h.name_length + h.keywords_length
    index_end = h.index_offset + h.layer_count * region_format.INDEX_DTYPE.itemsize
    struct.pack_into("<I", raw, at["meta_crc"],
                     region_format.meta_crc(raw, raw[region_format.HEADER_SIZE:meta_end], raw[h.index_offset:index_end]))
    path.write_bytes(bytes(raw))


def test_a_coordinator_skips_a_version_1_region_file_saying_to_rebuild_it(instance_name, tmp_path):
    _prices(tmp_path)
    _as_version_1(tmp_path / "prices.region")
    with small_coordinator(instance_name, tmp_path) as coord:
        [(path, reason)] = coord.load_report.skipped
        assert path.endswith("prices.region") and "format version 1 is not supported" in reason
        assert "rebuild" in reason


def test_a_region_file_of_format_version_1_is_refused_naming_its_version(tmp_path):
    _prices(tmp_path)
    _as_version_1(tmp_path / "prices.region")
    with pytest.raises(RegionFormatError) as err:
        Region.open(tmp_path / "prices.region")
    assert "format version 1 is not supported (this reader knows 2)" in str(err.value)
    assert err.value.offset == region_format.HEADER_OFFSETS["version"]


def test_a_region_whose_key_text_does_not_hash_to_its_id_is_refused(tmp_path):
    builder = RegionBuilder(1, "prices")
    builder.add_layer("AAPL", "187.2")
    raw = bytearray(builder.to_bytes())
    at = raw.index(b"AAPL")
    raw[at:at + 4] = b"AAPM"  # same length, another key: its id is not the row's
    h = region_format.Header._make(region_format.HEADER.unpack_from(raw, 0))
    meta_end = region_format.HEADER_SIZE + h.name_length + h.keywords_length
    index_end = h.index_offset + h.layer_count * region_format.INDEX_DTYPE.itemsize
    struct.pack_into("<I", raw, region_format.HEADER_OFFSETS["meta_crc"],
                     region_format.meta_crc(raw, raw[region_format.HEADER_SIZE:meta_end], raw[h.index_offset:index_end]))
    with pytest.raises(RegionFormatError) as err:
        Region.from_buffer(bytes(raw), source="forged.region")
    assert "'AAPM'" in str(err.value)


def test_a_key_a_region_cannot_store_is_refused_at_build():
    builder = RegionBuilder(1, "prices")
    with pytest.raises(InvalidLayer):
        builder.add_layer("lone \ud800 surrogate", "x")


def test_crystallize_and_edits_compare_key_text(instance_name, tmp_path):
    with small_coordinator(instance_name, tmp_path) as coord:
        proto = coord.create_proto_dimension(3, "prices")
        proto.add_layer("AAPL", "1")
        proto.add_layer("GOOG", "2", keywords=["g"])
        with pytest.raises(InvalidLayer):
            proto.add_layer("AAPL#evil", "collides")
        assert coord.load_layer_context(3, "AAPL").text == "1"  # generation 0, on the heap
        _assert_misses(coord.load_layer_context, 3, "AAPL#evil")
        with pytest.raises(LayerNotFound):
            proto.remove_layer("AAPL#evil")
        coord.crystallize(3)
        with shmpool.attach(instance_name) as reader:
            assert reader.get("prices", "AAPL").text == "1"
            _assert_misses(reader.get, "prices", "AAPL#evil")

            edit = coord.edit_dimension(3)
            _assert_misses(coord.load_layer_context, 3, "GOOG#evil")  # a base layer, through the edit
            assert coord.load_layer_context(3, "GOOG").text == "2"
            with pytest.raises(InvalidLayer):
                edit.add_layer("GOOG#evil", "would replace GOOG")
            with pytest.raises(LayerNotFound):
                edit.remove_layer("GOOG#evil")
            edit.add_layer("AAPL", "3")
            edit.add_layer("MSFT", "4")
            with pytest.raises(InvalidLayer):
                edit.add_layer("MSFT#evil", "would replace the edit's own MSFT")
            coord.crystallize(3)
            assert reader.get("prices", "AAPL").text == "3" and reader.get("prices", "MSFT").text == "4"
            assert reader.get("prices", "GOOG").text == "2" and reader.get("prices", "GOOG").keywords == ("g",)
            for absent in ("AAPL#evil", "MSFT#evil", "GOOG#evil"):
                _assert_misses(reader.get, "prices", absent)
            # The edited generation as a region file (what eviction spills): keys kept, text checked.
            pub = coord._publisher.current[3]
            with Region.from_buffer(coord._publisher.region_bytes(pub), source="edited") as region:
                assert sorted(region.key(r) for r in range(len(region))) == ["AAPL", "GOOG", "MSFT"]
                assert "GOOG#evil" not in region


def test_jobs_send_the_key_text_to_the_worker(instance_name, tmp_path):
    _prices(tmp_path)
    with Coordinator(instance_name, data_dir=tmp_path, workers=1, worker_init=_key_collide.install):
        with shmpool.connect(instance_name) as client:
            assert client.lookup(1, "AAPL").text == "187.2"
            with pytest.raises(LayerNotFound):
                client.lookup(1, "AAPL#evil")
            batch = client.load_contexts([(1, "AAPL"), (1, "AAPL#evil")], strict=False)
            assert len(batch) == 1 and len(batch.missing) == 1


KEYS = st.text(st.sampled_from("abcé東"), min_size=0, max_size=4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(present=st.sets(KEYS, min_size=1, max_size=12), ids=st.sets(st.integers(0, 50), max_size=6),
       suffixes=st.lists(st.text(st.sampled_from("#xé"), min_size=1, max_size=3), min_size=1, max_size=4),
       compress=st.booleans())
def test_every_lookup_path_agrees_with_the_builder_under_forced_key_collisions(
        instance_name, tmp_path_factory, present, ids, suffixes, compress):
    folder = tmp_path_factory.mktemp("keys")
    builder = RegionBuilder(2, "keys")
    model: dict[object, bytes] = {}
    for key in sorted(present):
        content = f"key {key!r} " * 30
        builder.add_layer(key, content, compress=compress)
        model[key] = content.encode()
    for lid in sorted(ids):
        builder.add_layer(lid, f"id {lid}")
        model[lid] = f"id {lid}".encode()
    # Absent keys that collide with present ones ("k#..." hashes as "k"), and their bare texts.
    absent = [k + ("#" + s if "#" not in s else s) for k in sorted(present) for s in suffixes]
    absent = [a for a in absent if a not in present]
    builder.write(folder / "keys.region")
    with small_coordinator(instance_name, folder), shmpool.attach(instance_name) as reader:
        for key, raw in model.items():
            assert bytes(reader.load_layer_context(2, key).content) == raw
        for key in absent:
            _assert_misses(reader.load_layer_context, 2, key)
        steps = [(2, k) for k in [*model, *absent]]
        batch = reader.load_contexts(steps, strict=False)
        assert [bytes(c.content) for c in batch] == list(model.values())
        assert [m.position for m in batch.missing] == list(range(len(model), len(steps)))
        with reader.snapshot() as snap:
            for key, raw in model.items():
                assert bytes(snap.load_layer_context(2, key).content) == raw
            for key in absent:
                _assert_misses(snap.load_layer_context, 2, key)
            assert len(snap.load_contexts(steps, strict=False).missing) == len(absent)
        with Region.open(folder / "keys.region") as region:
            for key, raw in model.items():
                content = region.content(key)
                assert bytes(content) == raw and zlib.crc32(content) == zlib.crc32(raw)
            assert not any(key in region for key in absent)


def test_cold_compression_republishes_keyed_layers_with_their_text(instance_name, tmp_path):
    from shmpool.coordinator.capacity import CapacityPolicy

    builder = RegionBuilder(1, "prices")
    builder.add_layer("AAPL", "187.2 " * 500)
    builder.add_layer("MSFT", "402.1 " * 500)
    builder.write(tmp_path / "prices.region")
    policy = CapacityPolicy(compress_cold=True, cold_after=0.1, sample_interval=0.02, rehydrate_after=10**6)
    with Coordinator(instance_name, data_dir=tmp_path, workers=0, capacity=policy) as coord:
        deadline = time.monotonic() + 30  # catches a hang only
        while coord.stats()["capacity"]["compressions"] < 1:
            assert time.monotonic() < deadline, "the dimension was never compressed"
            time.sleep(0.02)
        with shmpool.attach(instance_name) as reader:
            assert reader.get("prices", "AAPL").text == "187.2 " * 500
            _assert_misses(reader.get, "prices", "AAPL#evil")
            _assert_misses(reader.get, "prices", "MSFT#evil")


def test_a_dimension_name_is_checked_against_the_published_generation(instance_name, tmp_path):
    with small_coordinator(instance_name, tmp_path) as coord, shmpool.attach(instance_name) as reader:
        proto = coord.create_proto_dimension(1, "prices")
        proto.add_layer("AAPL", "dimension 1")
        coord.crystallize(1)
        assert reader.get("prices", "AAPL").text == "dimension 1"  # the reader remembers "prices" -> 1
        renamed = coord.create_proto_dimension(1, "old prices")
        renamed.add_layer("AAPL", "dimension 1, renamed")
        coord.crystallize(1)
        moved = coord.create_proto_dimension(2, "prices")
        moved.add_layer("AAPL", "dimension 2")
        coord.crystallize(2)
        assert reader.get("prices", "AAPL").text == "dimension 2"
        assert reader.dimension_id("prices") == 2 and reader.dimension_id("old prices") == 1
        assert reader.load_layer_context("prices", "AAPL").text == "dimension 2"


def test_a_dask_pin_reading_its_stored_generation_compares_key_text(tmp_path):
    pytest.importorskip("distributed")
    from shmpool import _dask_host as host
    from shmpool._dask_pin import Pin, _stored

    builder = RegionBuilder(1, "prices")
    builder.add_layer("AAPL", "187.2")
    builder.write(host.store_file(tmp_path, 1, 4))
    pin = Pin(plugin="p", store_dir=str(tmp_path), generations={1: 4}, token="t", expires=time.time() + 60)
    ctx = _stored(pin, 1, 4, "AAPL")
    assert ctx.text == "187.2" and ctx.layer_id == key_id("AAPL")
    with pytest.raises(LayerNotFound):
        _stored(pin, 1, 4, "AAPL#evil")


BASE_KEYS = st.sampled_from(["a", "b", "é", "東", ""])
EDIT_KEYS = st.builds(lambda base, tail: base + tail, BASE_KEYS, st.sampled_from(["", "", "#1", "#2"]))
EDITS = st.lists(st.lists(st.tuples(st.sampled_from(["add", "remove"]), EDIT_KEYS, st.integers(0, 9)),
                          min_size=1, max_size=6), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS)
def test_edits_under_forced_key_collisions_agree_with_a_model(instance_name, tmp_path_factory, edits):
    """Crystallized edits of keys that collide ("a", "a#1", "a#2" share an id): an add of a key
    colliding with a present one is refused, a remove of one is LayerNotFound, and after each
    crystallize every present key reads its bytes and every other key of its id is absent."""
    folder = tmp_path_factory.mktemp("edits")
    model: dict[str, str] = {}
    with small_coordinator(instance_name, folder) as coord, shmpool.attach(instance_name) as reader:
        first = coord.create_proto_dimension(5, "edited")
        first.add_layer(7, "an id")  # the dimension is never empty
        coord.crystallize(5)
        for round_ in edits:
            edit = coord.edit_dimension(5)
            for op, key, n in round_:
                holder = next((k for k in model if key_id(k) == key_id(key)), None)
                if op == "add":
                    content = f"{key!r} {n}"
                    if holder is not None and holder != key:
                        with pytest.raises(InvalidLayer):
                            edit.add_layer(key, content)
                    else:
                        edit.add_layer(key, content)
                        model[key] = content
                elif holder != key:
                    with pytest.raises(LayerNotFound):
                        edit.remove_layer(key)
                else:
                    edit.remove_layer(key)
                    del model[key]
            coord.crystallize(5)
            for key, content in model.items():
                assert reader.get("edited", key).text == content
            for base in ("a", "b", "é", "東", ""):
                for key in (base, base + "#1", base + "#2"):
                    if key not in model:
                        _assert_misses(reader.get, "edited", key)
            assert reader.get("edited", 7).text == "an id"
