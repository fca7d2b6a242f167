"""Property tests of the region format: round trips, and damage never gets past RegionFormatError.

Damaged bytes must give either a valid Region, whose every layer then reads in bounds, or a
RegionFormatError: never another exception, never an out-of-bounds read. Damage is tried with the
meta CRC left alone (caught there) and re-sealed (so it reaches the checks behind the CRC).
"""

from __future__ import annotations

import math
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmpool.errors import RegionFormatError
from shmpool.data.region import HEADER, HEADER_OFFSETS, HEADER_SIZE, INDEX_DTYPE, Header, Region, meta_crc
from shmpool.data.region_builder import RegionBuilder

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keywords = st.text(st.characters(blacklist_characters="\x1f", blacklist_categories=("Cs",)),
                   min_size=1, max_size=8)
contents = st.binary(max_size=80) | st.text(max_size=40)
layer_ids = st.integers(0, 50) | st.integers(0, 2**63 - 1)
layer_sets = st.dictionaries(
    layer_ids,
    st.tuples(contents, st.floats(allow_nan=False, allow_infinity=False), st.lists(keywords, max_size=5)),
    max_size=10,
)


def build(dimension_id: int, name: str, layers: dict) -> RegionBuilder:
    b = RegionBuilder(dimension_id, name)
    for layer_id, (content, frequency, kws) in layers.items():
        b.add_layer(layer_id, content, frequency=frequency, keywords=kws)
    return b


def _bases() -> list[bytes]:
    rich = build(9, "fuzz-ü", {
        1: ("plain text", 0.5, ["a", "b"]), 2: (b"\x00\xff" * 9, 2.0, []), 3: ("", 0.0, ["ë"]),
        4: ("日本語のテキスト", 0.1, ["日本", "x"]), 5: (b"", 0.0, []), 2**40: ("z" * 37, 1e300, ["big"]),
    })
    many = build(1, "many", {i: (f"layer {i}" * (i % 4), i / 20, [f"k{i}"]) for i in range(20)})
    return [rich.to_bytes(), many.to_bytes(), RegionBuilder(3, "empty").to_bytes()]


BASES = _bases()


def reseal(buf: bytearray) -> None:
    """Recompute the meta CRC if the (possibly damaged) header still points inside the buffer."""
    h = Header._make(HEADER.unpack_from(buf, 0))
    meta_end = HEADER_SIZE + h.name_length + h.keywords_length
    index_end = h.index_offset + h.layer_count * INDEX_DTYPE.itemsize
    if meta_end <= len(buf) and index_end <= len(buf):
        crc = meta_crc(bytes(buf[:HEADER_SIZE]), bytes(buf[HEADER_SIZE:meta_end]),
                       bytes(buf[h.index_offset:index_end]))
        struct.pack_into("<I", buf, HEADER_OFFSETS["meta_crc"], crc)


def check_safe(data: bytes, verify: bool) -> Region | None:
    """Either RegionFormatError, or a Region whose every accessor works and stays in bounds."""
    try:
        region = Region.from_buffer(data, source="fuzz", verify_checksums=verify)
    except RegionFormatError as exc:
        assert exc.source == "fuzz" and exc.fault
        return None
    ends = []
    for layer_id in region.layer_ids():
        row = region.row(layer_id)
        view = region.layer(layer_id)
        start, length = int(region.index["offset"][row]), int(region.index["length"][row])
        assert len(view) == length and start + length <= len(data)
        assert bytes(view) == data[start:start + length]
        assert all(isinstance(k, str) and k for k in region.keywords(row))
        assert isinstance(region.is_text(row), bool) and math.isfinite(region.frequency(row))
        if region.is_text(row) and verify:
            bytes(view).decode("utf-8")
        if length:
            ends.append((start, start + length))
    ends.sort()
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))
    try:
        region.verify_checksums()
    except RegionFormatError:
        assert not verify
    return region


@FUZZ
@given(st.integers(1, 2**32 - 1), st.text(max_size=20).filter(lambda s: len(s.encode()) <= 255), layer_sets)
def test_random_layer_sets_round_trip(dimension_id, name, layers):
    b = build(dimension_id, name, layers)
    data = b.to_bytes()
    assert len(data) == b.nbytes()
    region = Region.from_buffer(data, source="prop")
    assert (region.dimension_id, region.name) == (dimension_id, name)
    assert region.layer_ids() == sorted(layers)
    for layer_id, (content, frequency, kws) in layers.items():
        row = region.row(layer_id)
        expected = content.encode() if isinstance(content, str) else content
        assert bytes(region.layer(layer_id)) == expected
        assert region.is_text(row) == isinstance(content, str)
        assert region.frequency(row) == frequency and region.keywords(row) == tuple(kws)
    garbage = bytearray(np.random.default_rng(len(data)).bytes(len(data) + 5))
    b.write_into(garbage)
    assert bytes(garbage[:len(data)]) == data


@FUZZ
@given(st.sampled_from(BASES), st.data())
def test_truncation_is_always_refused(base, data):
    cut = data.draw(st.integers(0, len(base) - 1))
    assert check_safe(base[:cut], verify=True) is None


@FUZZ
@given(st.sampled_from(BASES), st.data(), st.booleans())
def test_truncation_with_a_patched_length_is_safe(base, data, verify):
    cut = data.draw(st.integers(HEADER_SIZE, len(base)))
    buf = bytearray(base[:cut])
    struct.pack_into("<Q", buf, HEADER_OFFSETS["region_length"], cut)
    reseal(buf)
    check_safe(bytes(buf), verify)


@FUZZ
@given(st.sampled_from(BASES), st.data(), st.booleans(), st.booleans())
def test_bit_flips_are_safe(base, data, verify, sealed):
    flips = data.draw(st.lists(st.integers(0, len(base) * 8 - 1), min_size=1, max_size=8))
    buf = bytearray(base)
    for bit in flips:
        buf[bit // 8] ^= 1 << (bit % 8)
    if sealed:
        reseal(buf)
    region = check_safe(bytes(buf), verify)
    if verify and not sealed and region is not None:
        # Everything but padding is covered by a CRC: a flip that survives both checks changed
        # nothing a reader can see.
        original = Region.from_buffer(base, source="base")
        assert region.layer_ids() == original.layer_ids()
        assert all(region.layer(i) == original.layer(i) for i in original.layer_ids())


INDEX_FIELDS = [(name, INDEX_DTYPE.fields[name][1], INDEX_DTYPE[name].itemsize) for name in INDEX_DTYPE.names]
HEADER_FIELDS = [(name, HEADER_OFFSETS[name], size) for name, size in (
    ("version", 2), ("flags", 2), ("header_size", 4), ("dimension_id", 4), ("layer_count", 4),
    ("name_length", 4), ("keywords_length", 4), ("index_offset", 8), ("content_offset", 8),
    ("region_length", 8), ("reserved", 4))]


@FUZZ
@given(st.sampled_from(BASES[:2]), st.data(), st.booleans())
def test_overwritten_fields_are_safe(base, data, verify):
    buf = bytearray(base)
    h = Header._make(HEADER.unpack_from(buf, 0))
    for _ in range(data.draw(st.integers(1, 3))):
        if data.draw(st.booleans()):
            name, at, size = data.draw(st.sampled_from(HEADER_FIELDS))
        else:
            name, at, size = data.draw(st.sampled_from(INDEX_FIELDS))
            at += h.index_offset + data.draw(st.integers(0, h.layer_count - 1)) * INDEX_DTYPE.itemsize
        extreme = st.sampled_from([0, 1, 7, 8, 2**(8 * size) - 1, 2**(8 * size) - 8, 2**(8 * size - 1)])
        value = data.draw(extreme | st.integers(0, min(2**(8 * size) - 1, 2 * len(base))))
        buf[at:at + size] = value.to_bytes(size, "little")
    reseal(buf)
    check_safe(bytes(buf), verify)
