"""The region format: round trips, every validation fault, file handling, the builder's checks."""

from __future__ import annotations

import gc
import math
import os
import struct
import weakref
import zlib

import numpy as np
import pytest

from shmpool.errors import InvalidLayer, LayerNotFound, RegionFormatError, ShmPoolError
from shmpool.data.region import (
    FLAG_TEXT, HEADER, HEADER_OFFSETS, HEADER_SIZE, INDEX_DTYPE, MAGIC, Header, Region, meta_crc,
)
from shmpool.data.region_builder import RegionBuilder

SOURCE = "test-region"


def small_builder() -> RegionBuilder:
    b = RegionBuilder(7, "séquence")
    b.add_layer(10, "hello wörld", frequency=0.25, keywords=["greeting", "wörld"])
    b.add_layer(3, b"\x00\x01\x02\xff" * 5, frequency=1.5, keywords=["bin"])
    b.add_layer(42, "", keywords=())                 # empty text layer
    b.add_layer(11, b"", frequency=0.0)              # empty binary layer
    b.add_layer(2**63 - 1, "last" * 30, keywords=["max", "id"])
    return b


def region_bytes() -> bytearray:
    return bytearray(small_builder().to_bytes())


def header(buf) -> Header:
    return Header._make(HEADER.unpack_from(buf, 0))


def rows(buf) -> np.ndarray:
    h = header(buf)
    return np.frombuffer(buf, INDEX_DTYPE, count=h.layer_count, offset=h.index_offset)


def reseal(buf: bytearray) -> bytearray:
    """Recompute the meta CRC, so a crafted fault reaches the check behind it."""
    h = header(buf)
    meta = bytes(buf[HEADER_SIZE:HEADER_SIZE + h.name_length + h.keywords_length])
    index = bytes(buf[h.index_offset:h.index_offset + h.layer_count * INDEX_DTYPE.itemsize])
    struct.pack_into("<I", buf, HEADER_OFFSETS["meta_crc"], meta_crc(bytes(buf[:HEADER_SIZE]), meta, index))
    return buf


def with_header(buf: bytearray, **fields) -> bytearray:
    HEADER.pack_into(buf, 0, *header(buf)._replace(**fields))
    return reseal(buf)


def with_row(buf: bytearray, row: int, **fields) -> bytearray:
    index = rows(buf)
    for name, value in fields.items():
        index[name][row] = value
    del index
    return reseal(buf)


def fault_of(buf, **kw) -> RegionFormatError:
    with pytest.raises(RegionFormatError) as info:
        Region.from_buffer(bytes(buf), source=SOURCE, **kw)
    assert info.value.source == SOURCE and SOURCE in str(info.value)
    return info.value


# ------------------------------------------------------------------ round trips

def test_layers_round_trip_with_content_keywords_flags_and_frequency():
    region = Region.from_buffer(small_builder().to_bytes(), source=SOURCE)
    assert (region.dimension_id, region.name, region.layer_count) == (7, "séquence", 5)
    assert region.layer_ids() == [3, 10, 11, 42, 2**63 - 1]
    assert bytes(region.layer(10)).decode() == "hello wörld"
    assert bytes(region.layer(3)) == b"\x00\x01\x02\xff" * 5
    assert bytes(region.layer(42)) == b"" and bytes(region.layer(11)) == b""
    assert region.keywords(region.row(10)) == ("greeting", "wörld")
    assert region.keywords(region.row(42)) == ()
    assert region.is_text(region.row(10)) and region.is_text(region.row(42))
    assert not region.is_text(region.row(3))
    assert region.frequency(region.row(3)) == 1.5
    assert int(region.index["crc32"][region.row(10)]) == zlib.crc32("hello wörld".encode())
    assert 10 in region and 12 not in region and len(region) == 5


def test_empty_builder_writes_a_valid_region_without_layers():
    data = RegionBuilder(1, "").to_bytes()
    region = Region.from_buffer(data, source=SOURCE)
    assert region.layer_ids() == [] and region.name == "" and region.nbytes == len(data) == 64


def test_layout_is_aligned_sorted_and_exactly_nbytes_long():
    b = small_builder()
    data = b.to_bytes()
    assert len(data) == b.nbytes()
    h, index = header(data), rows(data)
    assert h.index_offset % 8 == 0 and h.content_offset % 8 == 0
    assert (index["offset"] % 8 == 0).all() and (np.diff(index["layer_id"].astype(object)) > 0).all()
    assert h.region_length == len(data) and h.magic == MAGIC


def test_layer_is_a_zero_copy_read_only_view_and_the_index_is_read_only():
    buf = region_bytes()
    region = Region.from_buffer(buf, source=SOURCE)
    view = region.layer(10)
    assert view.readonly and region.buffer.readonly and region.buffer.format == "B"
    assert not region.index.flags.writeable
    buf[int(region.index["offset"][region.row(10)])] = ord("J")
    assert bytes(view[:5]) == b"Jello"  # the same memory, not a copy


def test_buffers_of_any_format_are_accepted_and_non_contiguous_ones_refused():
    data = small_builder().to_bytes()
    assert Region.from_buffer(np.frombuffer(data, np.uint8), source=SOURCE).layer_count == 5
    assert len(data) % 8 == 0
    assert Region.from_buffer(np.frombuffer(data, np.int64), source=SOURCE).nbytes == len(data)
    assert Region.from_buffer(memoryview(data).cast("B", (len(data),)), source=SOURCE).layer_count == 5
    assert "contiguous" in fault_of_obj(np.frombuffer(data * 2, np.uint8)[::2]).fault
    assert "contiguous" in fault_of_obj(12345).fault


def fault_of_obj(obj) -> RegionFormatError:
    with pytest.raises(RegionFormatError) as info:
        Region.from_buffer(obj, source=SOURCE)
    return info.value


def test_unknown_layer_raises_layer_not_found_with_the_values():
    region = Region.from_buffer(small_builder().to_bytes(), source=SOURCE)
    with pytest.raises(LayerNotFound) as info:
        region.layer(12)
    err = info.value
    assert (err.dimension_id, err.layer_id, err.layer_count) == (7, 12, 5)
    assert err.sample_ids == (3, 10, 11, 42, 2**63 - 1) and isinstance(err, LookupError)
    assert "layer 12 not found in dimension 7" in str(err)
    with pytest.raises(LayerNotFound):
        region.row(12)


def test_lookup_is_by_dict_so_every_id_of_a_large_region_resolves():
    b = RegionBuilder(1, "big")
    for i in range(5000):
        b.add_layer(i * 3, i.to_bytes(4, "little"))
    region = Region.from_buffer(b.to_bytes(), source=SOURCE)
    assert all(bytes(region.layer(i * 3)) == i.to_bytes(4, "little") for i in range(5000))
    assert all(region.row(i * 3) == i for i in range(0, 5000, 97))


# ------------------------------------------------------------------ validation faults

def test_short_and_empty_buffers_are_refused():
    assert "empty buffer" in fault_of(b"").fault
    assert "too short" in fault_of(b"SHMPRGN1").fault


HEADER_FAULTS = [
    (dict(magic=b"NOTAREGN"), "bad magic"),
    (dict(version=3), "format version 3 is not supported"),
    (dict(flags=4), "unknown header flags"),
    (dict(header_size=72), "header size 72"),
    (dict(reserved=1), "reserved header bytes are not zero"),
    (dict(dimension_id=0), "dimension id 0 is reserved"),
    (dict(name_length=300), "name length 300 exceeds 255"),
    (dict(region_length=10**9), "buffer holds"),
    (dict(keywords_length=2**32 - 1), "past the region end"),
    (dict(index_offset=HEADER_SIZE + 4), "index offset"),
    (dict(index_offset=HEADER_SIZE), "index offset"),       # overlaps the name
    (dict(content_offset=2**64 - 8), "content offset"),
    (dict(content_offset=HEADER_SIZE + 3), "content offset"),
    (dict(layer_count=2**32 - 1), "index of 4294967295 rows"),  # must not allocate
    (dict(layer_count=6), "index of 6 rows"),
]


@pytest.mark.parametrize(("fields", "text"), HEADER_FAULTS, ids=[t for _, t in HEADER_FAULTS])
def test_each_header_fault_is_named(fields, text):
    err = fault_of(with_header(region_bytes(), **fields))
    assert text in err.fault and isinstance(err.offset, int)


def test_truncated_region_says_so():
    data = region_bytes()
    err = fault_of(data[:-1])
    assert "truncated" in err.fault and err.offset == HEADER_OFFSETS["region_length"]


def test_meta_checksum_covers_header_name_keywords_and_index():
    for at in (HEADER_OFFSETS["dimension_id"], HEADER_SIZE + 1, header(region_bytes()).index_offset + 1):
        buf = region_bytes()
        buf[at] ^= 0x40
        assert "metadata checksum mismatch" in fault_of(buf).fault


def test_name_and_keywords_must_be_utf8():
    buf = region_bytes()
    buf[HEADER_SIZE] = 0xFF
    assert "dimension name is not valid UTF-8" in fault_of(reseal(buf)).fault
    buf = region_bytes()
    buf[HEADER_SIZE + header(buf).name_length] = 0xFF
    assert "keyword blob is not valid UTF-8" in fault_of(reseal(buf)).fault


def row_of(layer_id: int) -> int:
    return small_builder().layer_ids().index(layer_id)


ROW_FAULTS = [
    (1, dict(layer_id=3), "duplicate layer id 3"),
    (1, dict(layer_id=1), "not sorted ascending"),
    (4, dict(layer_id=2**64 - 1), "exceeds 2**63-1"),
    (1, dict(flags=FLAG_TEXT | 8), "layer 10 has unknown flags 0x9"),
    (0, dict(frequency=math.nan), "layer 3 frequency nan is not finite"),
    (0, dict(frequency=-math.inf), "not finite"),
    (1, dict(offset=4), "layer 10 offset 4 is not 8-aligned"),
    (1, dict(offset=8), "before the content area"),
    (1, dict(offset=2**64 - 8), "run past the region end"),
    (1, dict(length=2**64 - 1), "run past the region end"),   # offset + length would wrap in u8
    (1, dict(length=10**6), "run past the region end"),
    (1, dict(kw_offset=2**32 - 1), "outside the keyword blob"),
    (1, dict(kw_length=2**32 - 1), "outside the keyword blob"),
]


@pytest.mark.parametrize(("row", "fields", "text"), ROW_FAULTS, ids=[t for _, _, t in ROW_FAULTS])
def test_each_index_fault_names_the_layer(row, fields, text):
    err = fault_of(with_row(region_bytes(), row, **fields))
    assert text in err.fault
    assert err.offset >= header(region_bytes()).index_offset


def test_overlapping_layers_are_refused():
    buf = region_bytes()
    index = rows(buf)
    target = int(index["offset"][row_of(10)]) + 8
    del index
    err = fault_of(with_row(buf, row_of(2**63 - 1), offset=target))
    assert "layers 10 and 9223372036854775807 overlap" in err.fault


def test_empty_layers_overlap_nothing():
    buf = region_bytes()
    index = rows(buf)
    inside = int(index["offset"][row_of(10)]) + 8
    del index
    region = Region.from_buffer(bytes(with_row(buf, row_of(11), offset=inside)), source=SOURCE)
    assert bytes(region.layer(11)) == b""


def test_keyword_slice_inside_a_multibyte_character_is_refused():
    # "greeting\x1fwörld": byte 11 is the second byte of "ö".
    err = fault_of(with_row(region_bytes(), row_of(10), kw_length=11))
    assert "layer 10 keywords [" in err.fault and "split a UTF-8 character" in err.fault


def test_content_checksum_is_checked_unless_disabled():
    buf = region_bytes()
    start = int(rows(buf)["offset"][row_of(3)])
    buf[start] ^= 1
    err = fault_of(buf)
    assert "layer 3 content checksum mismatch" in err.fault and err.offset == start
    region = Region.from_buffer(bytes(buf), source=SOURCE, verify_checksums=False)
    with pytest.raises(RegionFormatError, match="layer 3 content checksum"):
        region.verify_checksums()


def test_text_layers_must_be_utf8():
    buf = region_bytes()
    row = row_of(10)
    start = int(rows(buf)["offset"][row])
    buf[start + 6] = 0xC3  # "hello \xc3örld": a lead byte followed by a lead byte
    content = bytes(buf[start:start + len("hello wörld".encode())])
    err = fault_of(with_row(buf, row, crc32=zlib.crc32(content)))
    assert "layer 10 text is not valid UTF-8" in err.fault and err.offset == start + 6
    Region.from_buffer(bytes(buf), source=SOURCE, verify_checksums=False)  # structure is fine


def test_nothing_but_region_format_error_escapes_for_garbage():
    rng = np.random.default_rng(1)
    for size in (0, 1, 63, 64, 65, 200, 4096):
        with pytest.raises(RegionFormatError):
            Region.from_buffer(rng.bytes(size), source=SOURCE)
        with pytest.raises(RegionFormatError):
            Region.from_buffer(MAGIC + rng.bytes(size), source=SOURCE)


# ------------------------------------------------------------------ files and lifetimes

def test_open_reads_a_written_file_and_close_is_idempotent(tmp_path):
    path = small_builder().write(tmp_path / "d.region")
    with Region.open(path) as region:
        assert region.source == str(path) and bytes(region.layer(10)).decode() == "hello wörld"
    assert region.closed
    region.close()
    with pytest.raises(ShmPoolError, match="closed"):
        region.layer(10)
    with pytest.raises(ShmPoolError, match="closed"):
        region.index


def test_open_refuses_missing_empty_and_directory_paths(tmp_path):
    missing = tmp_path / "nope.region"
    err = pytest.raises(RegionFormatError, Region.open, missing).value
    assert "No such file" in err.fault and err.source == str(missing)
    (tmp_path / "empty.region").write_bytes(b"")
    assert pytest.raises(RegionFormatError, Region.open, tmp_path / "empty.region").value.fault == "empty file"
    assert "directory" in pytest.raises(RegionFormatError, Region.open, tmp_path).value.fault
    (tmp_path / "junk.region").write_bytes(b"x" * 100)
    assert "bad magic" in pytest.raises(RegionFormatError, Region.open, tmp_path / "junk.region").value.fault


def test_open_of_a_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    assert "not a regular file" in pytest.raises(RegionFormatError, Region.open, tmp_path / "pipe").value.fault


def test_a_failed_open_leaves_no_mapping_behind(tmp_path):
    buf = region_bytes()
    buf[int(rows(buf)["offset"][0])] ^= 1
    (tmp_path / "bad.region").write_bytes(bytes(buf))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(RegionFormatError, match="checksum"):
            Region.open(tmp_path / "bad.region")
    assert len(os.listdir("/proc/self/fd")) <= before


def test_a_view_kept_past_close_stays_readable_and_unmaps_when_dropped(tmp_path):
    path = small_builder().write(tmp_path / "d.region")
    region = Region.open(path)
    mapping = weakref.ref(region._views.mapping)
    view = region.layer(10)
    region.close()
    assert bytes(view).decode() == "hello wörld"  # deferred unmapping, never a dangling view
    assert mapping() is not None and not mapping().closed
    del view, region
    gc.collect()
    assert mapping() is None  # the mmap object unmapped itself with its last view


def test_an_unclosed_region_is_unmapped_by_its_finalizer(tmp_path):
    path = small_builder().write(tmp_path / "d.region")
    region = Region.open(path)
    mapping = region._views.mapping
    del region
    gc.collect()
    assert mapping.closed


def test_close_of_a_from_buffer_region_lets_the_owner_resize_its_buffer():
    buf = region_bytes()
    region = Region.from_buffer(buf, source=SOURCE)
    with pytest.raises(BufferError):
        buf.extend(b"x")
    region.close()
    buf.extend(b"x")


def test_write_replaces_atomically_and_an_open_region_keeps_the_old_bytes(tmp_path):
    path = tmp_path / "d.region"
    small_builder().write(path)
    old = Region.open(path)
    other = RegionBuilder(7, "other")
    other.add_layer(1, "new")
    other.write(path)
    assert bytes(old.layer(10)).decode() == "hello wörld"
    old.close()
    with Region.open(path) as new:
        assert new.layer_ids() == [1] and os.stat(path).st_mode & 0o777 == 0o644
    assert sorted(os.listdir(tmp_path)) == ["d.region"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        small_builder().write(tmp_path / "taken")  # os.replace onto a directory fails
    assert os.listdir(tmp_path) == ["taken"]

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        small_builder().write(tmp_path / "x.region")
    assert os.listdir(tmp_path) == ["taken"]
    with pytest.raises(FileNotFoundError):
        small_builder().write(tmp_path / "missing" / "x.region")


# ------------------------------------------------------------------ the builder

def test_write_into_writes_every_byte_including_padding_and_nothing_past_nbytes():
    b = small_builder()
    target = bytearray(b"\xAA" * (b.nbytes() + 16))
    assert b.write_into(target) == b.nbytes()
    assert bytes(target[:b.nbytes()]) == b.to_bytes() and target[b.nbytes():] == b"\xAA" * 16
    with pytest.raises(ValueError, match="too small"):
        b.write_into(bytearray(b.nbytes() - 1))
    with pytest.raises(TypeError, match="read-only"):
        b.write_into(bytes(b.nbytes()))


def test_content_is_copied_at_add_time():
    b = RegionBuilder(1, "copy")
    data = bytearray(b"abc")
    b.add_layer(1, data)
    b.add_layer(2, memoryview(np.arange(3, dtype="<i4")))  # any buffer: its raw bytes (an ndarray: an array layer)
    data[0] = ord("X")
    region = Region.from_buffer(b.to_bytes(), source=SOURCE)
    assert bytes(region.layer(1)) == b"abc"
    assert bytes(region.layer(2)) == np.arange(3, dtype="<i4").tobytes()


def test_builder_set_operations():
    b = small_builder()
    assert len(b) == 5 and 10 in b and 12 not in b and b.layer_ids() == [3, 10, 11, 42, 2**63 - 1]
    before = b.nbytes()
    b.remove_layer(10)
    assert 10 not in b and b.nbytes() < before
    assert Region.from_buffer(b.to_bytes(), source=SOURCE).layer_ids() == [3, 11, 42, 2**63 - 1]
    with pytest.raises(InvalidLayer, match="no such layer"):
        b.remove_layer(10)
    b.add_layer(np.int64(10), "again")
    assert 10 in b


BAD_LAYERS = [
    (dict(layer_id=True), "must be an int"),
    (dict(layer_id=b"1"), "must be an int"),
    (dict(layer_id=-1), "0 <= id < 2**63"),
    (dict(layer_id=2**63), "0 <= id < 2**63"),
    (dict(layer_id=3), "duplicate layer id"),
    (dict(frequency=math.nan), "not finite"),
    (dict(frequency=math.inf), "not finite"),
    (dict(frequency=True), "real number"),
    (dict(frequency="0.5"), "real number"),
    (dict(keywords="abc"), "not a single str"),
    (dict(keywords=["a\x1fb"]), "without"),
    (dict(keywords=[""]), "non-empty"),
    (dict(keywords=[3]), "non-empty str"),
    (dict(keywords=["\ud800"]), "not encodable"),
    (dict(content=5), "bytes-like"),
    (dict(content=None), "bytes-like"),
    (dict(content=object()), "bytes-like"),
    (dict(content="\ud800"), "not encodable"),
]


@pytest.mark.parametrize(("change", "text"), BAD_LAYERS, ids=[f"{i}-{next(iter(c))}" for i, (c, _) in enumerate(BAD_LAYERS)])
def test_builder_refuses_bad_layers_with_invalid_layer(change, text):
    args = dict(layer_id=99, content=b"x", frequency=0.5, keywords=["k"]) | change
    b = small_builder()
    with pytest.raises(InvalidLayer) as info:
        b.add_layer(args.pop("layer_id"), args.pop("content"), **args)
    assert text in info.value.reason and info.value.dimension_id == 7
    assert len(b) == 5


@pytest.mark.parametrize(("dimension_id", "name", "error"), [
    (0, "x", ValueError), (2**32, "x", ValueError), (True, "x", TypeError), ("1", "x", TypeError),
    (1, "é" * 128, ValueError), (1, b"x", TypeError), (1, "\udc00", ValueError),
])
def test_builder_refuses_bad_dimension_ids_and_names(dimension_id, name, error):
    with pytest.raises(error):
        RegionBuilder(dimension_id, name)


def test_longest_name_round_trips():
    name = "é" * 127 + "x"  # 255 UTF-8 bytes
    assert Region.from_buffer(RegionBuilder(2**32 - 1, name).to_bytes(), source=SOURCE).name == name
