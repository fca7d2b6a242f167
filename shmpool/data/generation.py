"""One mapped generation of one dimension, and the one lookup of a layer in it.

A :class:`Generation` holds views of the generation's layer index (built once by the coordinator
in shared memory, shmpool/data/layer_index.py) and of the pools its layers live in: O(1) Python
objects whatever the layer count. :meth:`Generation.lookup` is the only code that decodes a slot
of the table for a lookup (the Reader, its batches and Snapshots all call it); the slot's words
are named once, in layer_index (SLOT_KEY, SLOT_START, SLOT_END, SLOT_META).

The views are pinned arrays (shmpool/data/mapping.py, which maps generations and owns the pins):
a Generation, and every context made from it, keeps its generation pinned while it lives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from ..errors import LayerNotFound
from . import layer_index
from .compression import inflate
from .context import LoadedContext
from .layer_index import HEADER_SIZE, POOL_BITS, POOL_MASK, SLOT_END, SLOT_KEY, SLOT_META, SLOT_SHIFT, SLOT_START
from .region import FLAG_TEXT, FLAG_ZSTD, split_keywords

if TYPE_CHECKING:
    from .layer_index import Header

__all__ = ["Generation", "NOT_MAPPED"]

_new = object.__new__


class Generation:
    """Views of one published generation's layer index and of the pools its layers live in.

    Lookups probe the index in shared memory; metadata is read from its rows on demand."""

    __slots__ = ("dimension_id", "generation", "name", "table", "mask", "pools", "_index", "_rows_at",
                 "layer_count", "_rows", "__weakref__")

    dimension_id: int
    generation: int
    name: str
    table: memoryview
    mask: int
    pools: "tuple[memoryview | None, ...]"
    layer_count: int

    def __init__(self, dimension_id: int, generation: int, index: np.ndarray, header: "Header",
                 pools: "tuple[memoryview | None, ...]") -> None:
        self.dimension_id = dimension_id
        self.generation = generation
        self.name = str(index[HEADER_SIZE:HEADER_SIZE + header.name_length].data, "utf-8")
        # One memoryview over the table section of the index (the index is whole int64 words).
        self.table = index.data.cast("q")[header.table_offset // 8:header.nbytes // 8]
        self.mask = header.slots - 1
        self.pools = pools  # pool number -> read-only memoryview of the whole pool segment, or None
        self.layer_count = header.layer_count
        self._index, self._rows_at = index, header.rows_offset
        self._rows: np.ndarray | None = None

    @property
    def source(self) -> str:
        return f"dimension {self.dimension_id} generation {self.generation}"

    @property
    def rows(self) -> np.ndarray:
        """The index rows (ROW_DTYPE, by layer id), viewed in place on first use: a reader that
        only looks layers up never makes the array."""
        rows = self._rows
        if rows is None:
            rows = self._rows = np.frombuffer(self._index, layer_index.ROW_DTYPE, count=self.layer_count,
                                              offset=self._rows_at)
        return rows

    # ----------------------------------------------------------------- the lookup

    def lookup(self, dimension_id: int, layer_id: int) -> LoadedContext:
        """The layer as a zero-copy context; LayerNotFound if this generation has no such layer.

        The decode of the hot path: the key at the id's home slot, its meta word, one slice of a
        pool view, the context's slots stored directly (~50 ns less than LoadedContext's Python
        __init__). No lock, no allocation beyond the slice and the context, no syscall. Anything
        unusual (a probe past the home slot, a compressed layer, a miss, a negative id) goes
        through :meth:`context`. Reader.load_layer_context, its batch loop and
        Snapshot.load_layer_context carry copies of these lines (a call costs 5-10% there);
        tests/test_lookup_paths.py checks every copy against the index builder."""
        table = self.table
        j = (layer_id & self.mask) << SLOT_SHIFT
        if table[j + SLOT_KEY] != layer_id:  # the hot paths inline this (Reader, Snapshot): no SLOT_KEY add
            return self.context(dimension_id, layer_id)
        meta = table[j + SLOT_META]
        if meta < 0:
            return self.context(dimension_id, layer_id)
        ctx = _new(LoadedContext)
        ctx.dimension_id = dimension_id
        ctx.layer_id = layer_id
        ctx.content = self.pools[meta & POOL_MASK][table[j + SLOT_START]:table[j + SLOT_END]]  # type: ignore[index]
        ctx._gen = self
        ctx._row = meta >> POOL_BITS
        return ctx

    def context(self, dimension_id: int, layer_id: int) -> LoadedContext:
        """:meth:`lookup` by the full probe (linear probing past collisions), compressed layers
        decompressed; LayerNotFound naming what exists."""
        table = self.table
        j = layer_index.probe(table, self.mask, layer_id)
        if j < 0:
            raise LayerNotFound(dimension_id=dimension_id, layer_id=layer_id, generation=self.generation,
                                layer_count=self.layer_count, sample_ids=self.rows["layer_id"][:12].tolist())
        meta = table[j + SLOT_META]
        if meta < 0:
            return self._inflated(dimension_id, layer_id, (~meta) >> POOL_BITS)
        pool = self.pools[meta & POOL_MASK]
        assert pool is not None  # the header's pool mask maps every pool a row names
        return LoadedContext(dimension_id, layer_id, pool[table[j + SLOT_START]:table[j + SLOT_END]], self,
                             meta >> POOL_BITS)

    def _inflated(self, dimension_id: int, layer_id: int, row: int) -> LoadedContext:
        """A compressed (cold) layer: the one lookup that returns a copy, decompressed here."""
        r = self.rows[row]
        start = int(r["start"])
        pool = self.pools[int(r["pool"])]
        assert pool is not None
        data = inflate(pool[start:int(r["end"])], source=self.source, layer_id=layer_id, offset=start)
        return LoadedContext(dimension_id, layer_id, memoryview(data).toreadonly(), self, row)

    # ----------------------------------------------------------------- metadata and scans

    def frequency(self, row: int) -> float:
        return float(self.rows["frequency"][row])

    def keywords(self, row: int) -> tuple[str, ...]:
        r = self.rows[row]
        start, end = int(r["kw_start"]), int(r["kw_end"])
        pool = self.pools[int(r["pool"])]
        return split_keywords(pool[start:end]) if end > start and pool is not None else ()

    def is_text(self, row: int) -> bool:
        return bool(self.rows["flags"][row] & FLAG_TEXT)

    def crc32(self, row: int) -> int:
        return int(self.rows["crc32"][row])

    def layer_ids(self) -> list[int]:
        return [int(i) for i in self.rows["layer_id"].tolist()]

    def rows_with_keyword(self, keyword: str) -> list[int]:
        """Rows tagged ``keyword``, decoded now: a per-reader map of every keyword would be
        O(layers) private memory per generation, the very cost the shared index removes."""
        rows = self.rows
        tagged: list[int] = np.flatnonzero(rows["kw_end"] > rows["kw_start"]).tolist()
        return [row for row in tagged if keyword in self.keywords(row)]

    def contexts(self, dimension_id: int, rows: Iterable[int]) -> Iterator[LoadedContext]:
        """Contexts of ``rows`` in the given order (scan)."""
        cols = self.rows
        ids, pool, start, end = (cols[f].tolist() for f in ("layer_id", "pool", "start", "end"))
        zstd = ((cols["flags"] & FLAG_ZSTD) != 0).tolist()
        pools = self.pools
        for row in rows:
            if zstd[row]:
                yield self._inflated(dimension_id, ids[row], row)
            else:
                view = pools[pool[row]]
                assert view is not None
                yield LoadedContext(dimension_id, ids[row], view[start[row]:end[row]], self, row)


# Stands in for a dropped generation: its number matches no published one, so the next lookup
# refreshes while the hot path keeps its single comparison. Only ``generation`` is ever read.
NOT_MAPPED: Generation = _new(Generation)
NOT_MAPPED.generation = -1
