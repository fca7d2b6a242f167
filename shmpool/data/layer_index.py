"""The layer index of one published generation: built once by the coordinator, read in place.

A published generation is an *index* in its own allocation (this module's format) whose rows
point at layer bytes anywhere in the pool segments: in one allocation of its own, or in
allocations of earlier generations (layer-level copy-on-write, coordinator/publisher.py). Every
reader indexes the same bytes through a memoryview cast to ``'q'``, so a reader keeps O(1)
Python objects per generation instead of a dict per layer (measured before: ~1.2 MB of private
objects per reader for the 2,800-layer sample).

Three sections after an 88-byte header (docs/shm-layout.md, "Layer index", lists the same fields):

* the dimension name (UTF-8);
* ``rows``: one ROW_DTYPE row per layer, sorted by layer id (scan order, metadata);
* ``table``: open addressing over the layer ids, ``slots`` (a power of two, above the layer
  count, :func:`slots_for_ids`) entries of four int64 words ``key, start, end, meta``. Slot of
  ``key`` is ``key & (slots - 1)``, then linear probing, for at most ``max_probe + 1`` slots
  (the header's ``max_probe``: the longest probe any present key needs, so a miss stops
  there). ``meta = row << 16 | pool`` for a plain layer and ``~(row << 16 | pool)``
  (negative) for a compressed one; an empty slot is ``-1, 0, 0, -1``,
  so a lookup that lands on it (a negative id, or a miss) takes the slow path on ``meta < 0``
  with no extra test on the fast one.

The identity hash keeps dense ids (0..n-1, or any run) collision-free and costs nothing to
compute in Python. Ids that keep their home slots apart in the smallest power of two above
their count (dense ids, any run of them) get that table: one probe for every hit *and* every
miss (max_probe 0; in a half-full table a missing id whose home slot fell inside the run walked
the whole run: 0.21 ms in a dimension of 100,000 ids, docs/shm-layout.md), and half the bytes
of a half-full table. Any other ids
get a table at most half full (:func:`slots_for`), where random sparse ids average under 1.5
probes. :func:`slots_for` of the count is also the largest table, for an index allocated before
its ids are known (the publisher's region files). Ids that defeat the identity hash (all
multiples of a large power of two) stay correct, only slower: a probe per colliding key.

The same table serves :class:`shmpool.data.region.Region` on the heap: one lookup code for both.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import numpy as np

from .._core import _lookup
from ..errors import RegionFormatError

__all__ = ["MAGIC", "VERSION", "HEADER", "HEADER_SIZE", "HEADER_OFFSETS", "ROW_DTYPE", "SLOT_WORDS", "SLOT_SHIFT",
           "SLOT_KEY", "SLOT_START", "SLOT_END", "SLOT_META", "EMPTY", "POOL_BITS", "POOL_MASK", "Header",
           "build_table", "probe", "index_nbytes", "write_index", "read_header", "slots_for", "slots_for_ids",
           "max_probe"]

MAGIC = b"SHMPLIX1"
VERSION = 3           # 3: tables as small as their ids allow, bounded probes (max_probe); 2: key text in rows
SLOT_WORDS = 4        # key, start, end, meta
SLOT_SHIFT = 2        # slot s starts at word s << SLOT_SHIFT of the table (SLOT_WORDS == 1 << SLOT_SHIFT)
# The words of a slot, in order (docs/shm-layout.md, "Layer index"). The compiled core's read
# path names the same words in shmpool/_core/_index_layout.pxd (tests/test_lookup_layout.py).
SLOT_KEY = 0          # the layer id, or EMPTY
SLOT_START = 1        # first byte of the layer's content in its pool segment
SLOT_END = 2          # one past its last byte
SLOT_META = 3         # row << POOL_BITS | pool; inverted (negative) for a compressed layer; EMPTY if empty
assert SLOT_KEY == 0 and SLOT_WORDS == 1 << SLOT_SHIFT == SLOT_META + 1  # the hot paths read a key as table[j]
EMPTY = -1            # key of an empty slot; its meta is -1 too (slow path)
POOL_BITS = 16        # meta = row << POOL_BITS | pool
POOL_MASK = (1 << POOL_BITS) - 1

_HEADER_FIELDS = (
    ("magic", "8s"),          # MAGIC: a reader refuses anything else before trusting a field
    ("version", "I"),         # VERSION
    ("name_length", "I"),     # bytes of the UTF-8 dimension name right after the header
    ("dimension_id", "Q"),    # must equal the directory entry's dimension
    ("generation", "Q"),      # must equal the generation the directory published it as
    ("layer_count", "Q"),     # rows
    ("slots", "Q"),           # table entries, a power of two > layer_count (>= 8): slots_for_ids
    ("pools", "Q"),           # bit p set: some row's bytes live in pool p (readers map only those)
    ("rows_offset", "Q"),     # from the index's first byte, 8-aligned
    ("table_offset", "Q"),    # after the rows, 8-aligned
    ("nbytes", "Q"),          # the whole index; the table ends exactly here
    ("max_probe", "Q"),       # the longest probe of a present key (0: each at its home): a miss stops after it
)
HEADER = struct.Struct("<" + "".join(code for _, code in _HEADER_FIELDS))
HEADER_SIZE = HEADER.size
HEADER_OFFSETS = {name: struct.calcsize("<" + "".join(c for _, c in _HEADER_FIELDS[:i]))
                  for i, (name, _) in enumerate(_HEADER_FIELDS)}


class Header(NamedTuple):
    """The header unpacked, one attribute per ``_HEADER_FIELDS`` entry in the same order (asserted)."""

    magic: bytes
    version: int
    name_length: int
    dimension_id: int
    generation: int
    layer_count: int
    slots: int
    pools: int
    rows_offset: int
    table_offset: int
    nbytes: int
    max_probe: int


assert Header._fields == tuple(name for name, _ in _HEADER_FIELDS)
assert HEADER_SIZE == 88

# One row per layer, ascending layer_id. Offsets are ABSOLUTE bytes in the row's pool segment.
ROW_DTYPE = np.dtype([
    ("layer_id", "<i8"),    # the key, 0 <= id < 2**63
    ("start", "<i8"),       # first byte of the stored content in pool segment `pool`
    ("end", "<i8"),         # one past its last byte
    ("kw_start", "<i8"),    # the layer's keywords (KEYWORD_SEPARATOR-joined UTF-8), same pool
    ("kw_end", "<i8"),      # kw_start == kw_end: no keywords
    ("frequency", "<f8"),   # caller-defined weight
    ("pool", "<u2"),        # pool segment holding content and keywords
    ("flags", "<u2"),       # region.FLAG_TEXT, region.FLAG_ZSTD
    ("crc32", "<u4"),       # zlib.crc32 of the uncompressed content
    ("key_start", "<i8"),   # region.FLAG_KEYED: the key's UTF-8 text, same pool; a lookup by key
    ("key_end", "<i8"),     # compares it after the probe hit (0, 0 without FLAG_KEYED)
])
assert ROW_DTYPE.itemsize == 72

_FLAG_ZSTD = 2  # region.FLAG_ZSTD; not imported: region imports this module


def _align(n: int) -> int:
    return -(-n // 8) * 8


def slots_for(n: int) -> int:
    """The table for ``n`` layers whatever their ids (and the largest one): a power of two,
    >= 2n, >= 8, so at most half full."""
    return max(8, 1 << max(0, 2 * n - 1).bit_length())


def slots_for_ids(ids: Any) -> int:
    """The table for these distinct ids: the smallest power of two above their count (>= 8) if
    no two of them share a home slot there (dense ids, any run of them: one probe for every
    lookup), else :func:`slots_for` of their count. At least one slot stays empty."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    small, half_full = max(8, 1 << n.bit_length()), slots_for(n)
    if small < half_full and np.unique(ids & (small - 1)).size == n:
        return small
    return half_full


def max_probe(table: np.ndarray) -> int:
    """The longest probe of a key in ``table`` (int64[slots, SLOT_WORDS]): how far past its home
    slot the farthest key lies; a miss need look no further."""
    keys = table[:, SLOT_KEY]
    present = keys != EMPTY
    if not present.any():
        return 0
    mask = len(table) - 1
    return int(((np.arange(len(table), dtype=np.int64) - (keys & mask)) & mask)[present].max())


def build_table(ids: np.ndarray, start: np.ndarray, end: np.ndarray, meta: np.ndarray,
                slots: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The open-addressing table over distinct ``ids``, int64[slots, 4], and each row's slot;
    vectorised (no per-key loop).

    Keys are inserted in rounds: each round, every key still pending claims its current slot if
    it is free; one claimant per slot wins (whichever the scatter stored), the others move on one
    slot. A slot once taken stays taken, so every slot between a key's home and its final place
    is full: linear-probing lookups find it. Rounds = the longest probe (1 for dense ids).
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    slots = slots_for_ids(ids) if slots is None else slots
    table = np.empty((slots, SLOT_WORDS), dtype=np.int64)
    table[:] = (EMPTY, 0, 0, EMPTY)  # SLOT_KEY, SLOT_START, SLOT_END, SLOT_META of an empty slot
    mask = slots - 1
    slot_of = ids & mask
    pending = np.arange(n)
    claim = np.empty(slots, dtype=np.int64)
    while pending.size:
        p = slot_of[pending]
        free = table[p, SLOT_KEY] == EMPTY
        cand, cp = pending[free], p[free]
        claim[cp] = cand
        won = claim[cp] == cand
        winners, slots_won = cand[won], cp[won]
        table[slots_won, SLOT_KEY] = ids[winners]
        pending = np.concatenate([pending[~free], cand[~won]])
        slot_of[pending] = (slot_of[pending] + 1) & mask
    table[slot_of, SLOT_START], table[slot_of, SLOT_END], table[slot_of, SLOT_META] = start, end, meta
    return table, slot_of


def probe(table: Any, mask: int, key: Any, longest: int | None = None) -> int:
    """The word index of ``key``'s slot in ``table`` (int64 words, ``mask + 1`` slots), or -1 if
    absent; -1 for anything but an int or a numpy integer (bools included). ``longest``: the
    table's :func:`max_probe`, where a miss may stop (None: it probes on to an empty slot).

    The probe of the compiled core (shmpool/_core/_lookup.pyx), the one every lookup runs: its
    layout constants are shmpool._core._index_layout's, checked against this module's by
    tests/test_lookup_layout.py."""
    return int(_lookup.probe(table, mask, key, -1 if longest is None else longest))  # -1: the core's own 'none known'


def meta_column(rows: np.ndarray) -> np.ndarray:
    """Each row's table ``meta`` word: row number and pool, inverted for compressed layers."""
    meta = (np.arange(len(rows), dtype=np.int64) << POOL_BITS) | rows["pool"].astype(np.int64)
    return np.where((rows["flags"] & _FLAG_ZSTD) != 0, ~meta, meta)


def index_nbytes(name_length: int, layer_count: int, slots: int | None = None) -> int:
    """Bytes of the index of ``layer_count`` layers in a table of ``slots``; without ``slots``,
    the most it takes whatever the ids (:func:`slots_for`), for a publisher that allocates
    before it knows them (:func:`write_index` may then use less)."""
    slots = slots_for(layer_count) if slots is None else slots
    return _align(HEADER_SIZE + name_length) + layer_count * ROW_DTYPE.itemsize + slots * SLOT_WORDS * 8


def write_index(view: memoryview, *, dimension_id: int, generation: int, name: bytes, rows: np.ndarray,
                table: np.ndarray | None = None, slots: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Write the index (header, name, rows sorted by layer_id as given, table) at the start of
    ``view``; returns the table and each row's slot (None when ``table`` was given: a copy of an
    earlier generation's table with the changed rows' slots updated). Every byte of the index
    is written (the view may hold garbage); its size is :func:`index_nbytes` with ``len(table)``.
    ``slots``: :func:`slots_for_ids` of the rows' ids, if the caller has it already."""
    n = len(rows)
    if table is not None:
        slots = len(table)
    elif slots is None:
        slots = slots_for_ids(rows["layer_id"])
    rows_at = _align(HEADER_SIZE + len(name))
    table_at = rows_at + n * ROW_DTYPE.itemsize
    nbytes = table_at + slots * SLOT_WORDS * 8
    slot_of = None
    if table is None:
        table, slot_of = build_table(rows["layer_id"], rows["start"], rows["end"], meta_column(rows), slots)
    pools = 0
    for p in np.unique(rows["pool"]).tolist():
        pools |= 1 << p
    HEADER.pack_into(view, 0, MAGIC, VERSION, len(name), dimension_id, generation, n, slots, pools,
                     rows_at, table_at, nbytes, max_probe(table))
    view[HEADER_SIZE:HEADER_SIZE + len(name)] = name
    view[HEADER_SIZE + len(name):rows_at] = bytes(rows_at - HEADER_SIZE - len(name))
    view[rows_at:table_at] = rows.data.cast("B")  # .data: memoryview(ndarray), typed before 3.12
    view[table_at:nbytes] = table.data.cast("B")
    return table, slot_of


def read_header(buffer: Any, *, source: str, dimension_id: int, generation: int) -> Header:
    """The header of an index, checked against what the directory said and against its own length.

    O(1): the coordinator built the rows and the table and checked the layers they point at when
    it published them; a reader checks only that the index is the one it asked for and that every
    section lies inside it. Raises RegionFormatError naming the fault.
    """
    size = len(buffer)

    def fault(text: str, field: str | None = None) -> RegionFormatError:
        return RegionFormatError(source=source, fault=text, offset=None if field is None else HEADER_OFFSETS[field])

    if size < HEADER_SIZE:
        raise fault(f"{size} bytes is too short for the {HEADER_SIZE}-byte layer index header")
    h = Header._make(HEADER.unpack_from(buffer, 0))
    if h.magic != MAGIC:
        raise fault(f"bad magic {h.magic!r}, expected {MAGIC!r}: not a layer index", "magic")
    if h.version != VERSION:
        raise fault(f"layer index version {h.version} is not supported (this reader knows {VERSION})", "version")
    if h.dimension_id != dimension_id or h.generation != generation:
        raise fault(f"holds dimension {h.dimension_id} generation {h.generation}, expected dimension "
                    f"{dimension_id} generation {generation}", "dimension_id")
    if h.slots < 8 or h.slots & (h.slots - 1) or h.slots <= h.layer_count or h.max_probe >= h.slots:
        raise fault(f"table of {h.slots} slots (longest probe {h.max_probe}) for {h.layer_count} layers", "slots")
    if (h.rows_offset % 8 or h.rows_offset < HEADER_SIZE + h.name_length
            or h.table_offset != h.rows_offset + h.layer_count * ROW_DTYPE.itemsize
            or h.table_offset + h.slots * SLOT_WORDS * 8 != h.nbytes or h.nbytes > size):
        raise fault(f"sections (rows at {h.rows_offset}, table at {h.table_offset}, {h.slots} slots) do not "
                    f"fill the {size}-byte index", "rows_offset")
    return h
