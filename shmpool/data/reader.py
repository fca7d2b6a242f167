"""Lock-free, zero-copy readers of a running instance: ``shmpool.attach(name) -> Reader``.

How a lookup stays cheap and safe:

* Per dimension the reader keeps views of the current generation: its layer index, built once
  by the coordinator in shared memory (shmpool/data/layer_index.py), and the pools its layers live in.
  O(1) Python objects per generation, none per layer. A lookup reads the dimension's published
  GENERATION word from shared memory; if it still matches, it probes the shared table and slices
  a pool view. No lock, no syscall, no logging.
* When the generation moved, the reader first PINS the new generation (one int64 store in its
  reader row), then checks GENERATION did not move again, and only then touches the region. The
  coordinator frees a superseded region only after a grace period and only if no live reader pins
  that generation, so a region cannot be freed under a reader that is about to use it.
* Every view a reader hands out is a slice of a per-generation numpy array whose lifetime holds
  the pin: while any LoadedContext (or the bare ``content`` memoryview) lives, that generation
  stays pinned, and its bytes stay exactly as they were, also after ``Reader.close()``. Pins are
  exact (shmpool/data/pins.py): holding generation 1 does not hold back 2, 3, ...
* A daemon thread (shmpool/data/pin_watch.py) drops the reader's cached mapping of a superseded
  generation soon after each publication, so an idle reader does not pin it for ever.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Iterable, Iterator, cast

import numpy as np
from loguru import logger

from .context import ContextCollection, LoadedContext, MissingStep, NavigationPath, Step
from .directory import Directory, Location
from ..errors import (AttachError, DimensionNotFound, LayerNotFound, ReaderClosed, RegionFormatError, ReloadTimeout,
                     ShmPoolError)
from .gen_wait import GenerationWaiter
from ..substrate.ids import as_id
from ..substrate.instance import SharedInstance
from .compression import inflate
from ..substrate.layout import TOUCHED_READ, TOUCHED_RELOAD, W
from .pin_watch import PinWatcher
from .pins import RowPins, list_pins
from .readers import ReaderRegistry
from . import layer_index
from .layer_index import POOL_BITS, POOL_MASK
from .region import FLAG_TEXT, FLAG_ZSTD, split_keywords
from .layer_index import HEADER_SIZE
from .snapshot import SNAPSHOT_TIMEOUT, Snapshot

__all__ = ["Reader", "attach", "RELOAD_TIMEOUT"]

RELOAD_TIMEOUT = 10.0  # seconds a lookup waits for an evicted dimension to come back
RELOAD_POLL = 0.0005   # seconds between checks while waiting
BATCH_TRIES = 3        # load_contexts re-reads a batch a publish cut through, then uses a snapshot
_SEQ = int(W.PUBLISH_SEQ)  # a plain int: indexing a memoryview with an IntEnum costs an __index__ call

_new = object.__new__


class _PinnedBytes(np.ndarray):
    """A read-only byte array over shared memory; ``pin`` keeps its generation pinned."""
    __slots__ = ("pin",)  # no instance dict: a reader keeps two of these per mapped generation


class _Pin:
    """Lives while anything of one mapped generation does (its arrays hold it); its finalizer
    releases the generation's pin. A generation spans several arrays (its index and one per pool
    its layers live in), so the pin cannot hang off any single one of them."""
    __slots__ = ("__weakref__",)


def _pinned(mm, offset: int, nbytes: int, pin: _Pin) -> _PinnedBytes:
    # One array straight over the mapping (not frombuffer(...).view(): two objects).
    array = np.ndarray.__new__(_PinnedBytes, (nbytes,), np.uint8, buffer=mm, offset=offset)
    array.flags.writeable = False
    array.pin = pin
    return array


class _Generation:
    """One mapped generation of one dimension: views of its shared layer index and of the pools
    its layers live in. O(1) Python objects whatever the layer count: lookups probe the index in
    shared memory (shmpool/data/layer_index.py), metadata is read from its rows on demand."""

    __slots__ = ("dimension_id", "generation", "name", "table", "mask", "pools", "_index", "_rows_at",
                 "layer_count", "_rows", "__weakref__")

    def __init__(self, dimension_id: int, generation: int, index: _PinnedBytes,
                 header: layer_index.Header, pools: tuple) -> None:
        self.dimension_id = dimension_id
        self.generation = generation
        self.name = str(index[HEADER_SIZE:HEADER_SIZE + header.name_length].data, "utf-8")
        # One memoryview over the table section of the index (the index is whole int64 words).
        self.table = memoryview(index).cast("q")[header.table_offset // 8:header.nbytes // 8]
        self.mask = header.slots - 1
        self.pools = pools  # pool number -> read-only memoryview of the whole pool segment, or None
        self.layer_count = header.layer_count
        self._index, self._rows_at, self._rows = index, header.rows_offset, None

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

    def context(self, dimension_id: int, layer_id: int) -> LoadedContext:
        """The layer as a context; LayerNotFound if this generation has no such layer.

        The one lookup of a layer in a mapped generation. Reader.load_layer_context and the
        load_contexts loop inline its first three lines (a call costs ~50 ns); anything
        unusual (a probe past the first slot, a compressed layer, a miss) comes here."""
        table = self.table
        j = layer_index.probe(table, self.mask, layer_id)
        if j < 0:
            raise LayerNotFound(dimension_id=dimension_id, layer_id=layer_id, generation=self.generation,
                                layer_count=self.layer_count, sample_ids=self.rows["layer_id"][:12].tolist())
        meta = table[j + 3]
        if meta < 0:
            return self._inflated(dimension_id, layer_id, (~meta) >> POOL_BITS)
        ctx = _new(LoadedContext)
        ctx.dimension_id = dimension_id
        ctx.layer_id = layer_id
        ctx.content = self.pools[meta & POOL_MASK][table[j + 1]:table[j + 2]]
        ctx._gen = self
        ctx._row = meta >> POOL_BITS
        return ctx

    def _inflated(self, dimension_id: int, layer_id: int, row: int) -> LoadedContext:
        """A compressed (cold) layer: the one lookup that returns a copy, decompressed here."""
        r = self.rows[row]
        start = int(r["start"])
        data = inflate(self.pools[int(r["pool"])][start:int(r["end"])], source=self.source,
                       layer_id=layer_id, offset=start)
        return LoadedContext(dimension_id, layer_id, memoryview(data).toreadonly(), self, row)

    def frequency(self, row: int) -> float:
        return float(self.rows["frequency"][row])

    def keywords(self, row: int) -> tuple[str, ...]:
        r = self.rows[row]
        start, end = int(r["kw_start"]), int(r["kw_end"])
        return split_keywords(self.pools[int(r["pool"])][start:end]) if end > start else ()

    def is_text(self, row: int) -> bool:
        return bool(self.rows["flags"][row] & FLAG_TEXT)

    def crc32(self, row: int) -> int:
        return int(self.rows["crc32"][row])

    def layer_ids(self) -> list[int]:
        return self.rows["layer_id"].tolist()

    def rows_with_keyword(self, keyword: str) -> list[int]:
        """Rows tagged ``keyword``, decoded now: a per-reader map of every keyword would be
        O(layers) private memory per generation, the very cost the shared index removes."""
        rows = self.rows
        tagged = np.flatnonzero(rows["kw_end"] > rows["kw_start"]).tolist()
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
                yield LoadedContext(dimension_id, ids[row], pools[pool[row]][start[row]:end[row]], self, row)


class _NotMapped:
    """Stands in for a dropped generation: its number matches no published one, so the next
    lookup refreshes, while the hot path keeps its single comparison."""
    __slots__ = ()
    generation = -1


# Typed as a _Generation so the hot path needs no isinstance or cast (each a call per lookup):
# only .generation is ever read from it, and -1 matches no published generation, so every
# other attribute is reached only after _refresh() replaced it with a real one.
_NOT_MAPPED = cast("_Generation", _NotMapped())


class _DimView:
    __slots__ = ("dimension_id", "entry", "gen_pos", "touch_pos", "current")

    def __init__(self, dimension_id: int, entry: int) -> None:
        self.dimension_id = dimension_id
        self.entry = entry
        self.gen_pos = Directory.generation_position(entry)
        self.touch_pos = Directory.touched_position(entry)
        self.current: _Generation = _NOT_MAPPED


def _shutdown(registry: ReaderRegistry, slot: int, inst: SharedInstance | None) -> None:
    try:
        registry.unregister(slot)
    except ShmPoolError as exc:
        logger.debug("reader slot {} not released: {}", slot, exc)
    if inst is not None:
        inst.close()


class Reader:
    """A process's view of the published dimensions of one instance. Thread-safe.

    Lookups never block and never copy. A context stays valid after :meth:`close` (and after
    the Reader is collected): its generation stays pinned, and the reader's row and mappings
    stay, until the last context (or ``content`` view) of that reader is dropped. Lookups on a
    closed reader raise :class:`~shmpool.errors.ReaderClosed`.
    """

    def __init__(self, inst: SharedInstance, *, owns_instance: bool) -> None:
        self._inst = inst
        self._dir = Directory(inst.control)
        self._dir_mv = inst.control.directory_mv
        self._words_mv = inst.control.words_mv
        self._registry = ReaderRegistry(inst.control, inst.lock, inst.name)
        self._slot = self._registry.register()
        self._dims: dict[int, _DimView] = {}
        self._named: dict[str, int] = {}  # dimension name -> id, checked against the name at each use
        self._lock = threading.RLock()
        self._closed = False
        registry, slot, owned = self._registry, self._slot, inst if owns_instance else None
        # The pins outlive this object: contexts hold them (through their arrays' finalizers),
        # and the row is given back only when this reader is closed AND nothing is held.
        self._pins = RowPins(inst.control, slot, lambda: _shutdown(registry, slot, owned))
        self._finalizer = weakref.finalize(self, self._pins.reader_closed)
        self._watcher: PinWatcher | None = None
        self._waiter_obj: GenerationWaiter | None = None
        self._entries_cache: tuple[int, dict[int, int]] | None = None

    @property
    def name(self) -> str:
        return self._inst.name

    @property
    def instance(self) -> SharedInstance:
        """The mapped instance this reader reads (its allocation table, the coordinator's words)."""
        return self._inst

    # ----------------------------------------------------------------- the hot path

    def load_layer_context(self, dimension_id: int, layer_id: int) -> LoadedContext:
        """The layer's content as a zero-copy read-only view, with its metadata. O(1), lock-free.

        Ids are ints; numpy integers are accepted (and returned as ints). Raises InvalidId (a
        TypeError) for anything else, bools and floats included; DimensionNotFound /
        LayerNotFound naming the ids and what exists.
        """
        # Hot path: two exact type tests, one dict lookup, two int64 reads from shared memory
        # (generation, touched), four from the shared table (key, meta, start, end), one
        # memoryview slice and the result object. The touched word is
        # written only when it is 0, i.e. once per coordinator sampling period, so readers do not
        # fight over its cache line. No locks, no logging, no syscalls; scripts/bench_readers.py
        # measures it. The type tests come first because True and 3.0 would otherwise find
        # dimension 1 and 3 in the dicts (equal keys hash alike).
        if type(dimension_id) is not int or type(layer_id) is not int:
            dimension_id, layer_id = self._ids(dimension_id, layer_id)
        dv = self._dims.get(dimension_id)
        if dv is None:
            dv = self._dimension(dimension_id)
        gen = dv.current
        dir_mv = self._dir_mv
        if dir_mv[dv.gen_pos] != gen.generation:
            gen = self._refresh(dv)
        if not dir_mv[dv.touch_pos]:
            dir_mv[dv.touch_pos] = TOUCHED_READ
        # The lookup of _Generation.context, inlined: one probe of the shared table (a slot is
        # key, start, end, meta), then the slice of the pool view. A collision, a compressed
        # layer (meta < 0) or a miss goes through context() itself.
        table = gen.table
        j = (layer_id & gen.mask) << 2
        if table[j] != layer_id:
            return gen.context(dimension_id, layer_id)
        meta = table[j + 3]
        if meta < 0:
            return gen.context(dimension_id, layer_id)
        # Slots stored directly: ~50 ns less than calling LoadedContext's Python __init__.
        ctx = _new(LoadedContext)
        ctx.dimension_id = dimension_id
        ctx.layer_id = layer_id
        ctx.content = gen.pools[meta & POOL_MASK][table[j + 1]:table[j + 2]]
        ctx._gen = gen
        ctx._row = meta >> POOL_BITS
        return ctx

    def get(self, dimension: int | str, layer: int | str) -> LoadedContext:
        """The layer ``layer`` (an id or a str key) of dimension ``dimension`` (an id or its name).

        :meth:`load_layer_context` with names and keys spelled out: zero-copy, O(1) (a key is its
        key id, one hash; a name is one dict lookup). Raises DimensionNotFound naming the
        dimensions there are, LayerNotFound naming the key, InvalidId for another type.
        """
        try:
            return self.load_layer_context(dimension, layer)  # type: ignore[arg-type]
        except LayerNotFound as exc:
            if type(layer) is not str:
                raise
            raise LayerNotFound(dimension_id=exc.dimension_id, layer_id=repr(layer), generation=exc.generation,
                                layer_count=exc.layer_count) from None

    def dimension_id(self, name: str) -> int:
        """The id of the published dimension called ``name``; DimensionNotFound if there is none."""
        found = self._named.get(name)
        if found is not None and found in self._dims and self._dims[found].current.name == name:
            return found
        dimensions = self.dimensions()
        for dim_id, dim_name in dimensions.items():
            if dim_name == name:
                self._named[name] = dim_id
                return dim_id
        raise DimensionNotFound(dimension_id=repr(name),  # type: ignore[arg-type]
                                available=[f"{n!r} ({d})" for d, n in dimensions.items()])

    def _ids(self, dimension: Any, layer: Any) -> tuple[int, int]:
        """Off the hot path: a dimension by name, a layer by key, numpy integers; else InvalidId."""
        if type(dimension) is str:
            dimension = self.dimension_id(dimension)
        return as_id(dimension, "dimension_id"), as_id(layer, "layer_id")

    # ----------------------------------------------------------------- batch and scan

    def load_contexts(self, path: NavigationPath | Iterable[Step], *, strict: bool = True) -> ContextCollection:
        """Load every step of ``path`` in order.

        With ``strict`` (default) the first missing step raises; otherwise missing steps are
        listed in ``.missing`` with the reason, never silently dropped. Ids are checked as by
        :meth:`load_layer_context` (by NavigationPath), before anything is loaded.
        """
        steps = NavigationPath.of(path)
        # One instant per batch: a publish (W.PUBLISH_SEQ moved, or odd: a commit in progress)
        # during the batch may have mixed generations, so then it is read again. Two int64 reads.
        seq_mv = self._words_mv
        seq = seq_mv[_SEQ]
        if not seq & 1:
            try:
                out = self._batch(steps, strict)
            except (DimensionNotFound, LayerNotFound):
                if seq_mv[_SEQ] == seq:
                    raise
            else:
                if seq_mv[_SEQ] == seq:
                    return out
        return self._batch_again(steps, strict)

    def _batch_again(self, steps: NavigationPath, strict: bool) -> ContextCollection:
        """A publish cut through the batch: read it again, then through a snapshot (which
        waits for a commit in progress to end, or fails typed)."""
        seq_mv = self._words_mv
        for _ in range(BATCH_TRIES - 1):
            seq = seq_mv[_SEQ]
            if seq & 1:
                continue
            try:
                out = self._batch(steps, strict)
            except (DimensionNotFound, LayerNotFound):
                if seq_mv[_SEQ] == seq:
                    raise
                continue
            if seq_mv[_SEQ] == seq:
                return out
        with self.snapshot() as snap:
            return snap.load_contexts(steps, strict=strict)

    def _batch(self, steps: NavigationPath, strict: bool) -> ContextCollection:
        out = ContextCollection()
        contexts = out.contexts
        append = contexts.append
        dims, dir_mv, load = self._dims, self._dir_mv, self.load_layer_context
        # The hot path of load_layer_context inlined: a batch of 20 costs ~20 slices, not 20
        # method calls. Anything unusual (first use, new generation, compressed or missing
        # layer) goes through load_layer_context itself.
        for pos, (dim, layer) in enumerate(steps):
            dv = dims.get(dim)
            if dv is not None:
                gen = dv.current
                if dir_mv[dv.gen_pos] == gen.generation and dir_mv[dv.touch_pos]:
                    table = gen.table
                    j = (layer & gen.mask) << 2
                    if table[j] == layer:
                        meta = table[j + 3]
                        if meta >= 0:
                            ctx = _new(LoadedContext)
                            ctx.dimension_id = dim
                            ctx.layer_id = layer
                            ctx.content = gen.pools[meta & POOL_MASK][table[j + 1]:table[j + 2]]
                            ctx._gen = gen
                            ctx._row = meta >> POOL_BITS
                            append(ctx)
                            continue
            try:
                append(load(dim, layer))
            except (DimensionNotFound, LayerNotFound) as exc:
                if strict:
                    raise
                out.missing.append(MissingStep(pos, dim, layer, str(exc)))
        return out

    def scan(self, dimension_id: int, keyword: str | None = None) -> Iterator[LoadedContext]:
        """Every layer of the dimension's current generation (in layer id order), or only those
        tagged ``keyword``. The generation is fixed when the scan starts."""
        dimension_id = as_id(dimension_id, "dimension_id")
        dv = self._dims.get(dimension_id) or self._dimension(dimension_id)
        gen = dv.current
        if self._dir_mv[dv.gen_pos] != gen.generation:
            gen = self._refresh(dv)
        rows = range(gen.layer_count) if keyword is None else gen.rows_with_keyword(keyword)
        self._dir_mv[dv.touch_pos] = max(self._dir_mv[dv.touch_pos], TOUCHED_READ)
        yield from gen.contexts(dimension_id, rows)

    # ----------------------------------------------------------------- introspection

    def generation(self, dimension_id: int) -> int:
        """The currently published generation of the dimension."""
        dimension_id = as_id(dimension_id, "dimension_id")
        dv = self._dims.get(dimension_id) or self._dimension(dimension_id)
        return int(self._dir_mv[dv.gen_pos])

    def dimensions(self) -> dict[int, str]:
        """{dimension id: name} of every published dimension."""
        out = {}
        for dim_id in sorted(self._published()):
            try:
                dv = self._dims.get(dim_id) or self._dimension(dim_id)
            except DimensionNotFound:
                continue
            gen = dv.current
            if self._dir_mv[dv.gen_pos] != gen.generation:
                gen = self._refresh(dv)
            out[dim_id] = gen.name
        return out

    def layer_ids(self, dimension_id: int) -> list[int]:
        dimension_id = as_id(dimension_id, "dimension_id")
        dv = self._dims.get(dimension_id) or self._dimension(dimension_id)
        gen = dv.current if self._dir_mv[dv.gen_pos] == dv.current.generation else self._refresh(dv)
        return gen.layer_ids()

    def drop_stale(self) -> int:
        """Let go of every generation that is no longer the published one; returns how many.

        A reader keeps the generation it last used mapped (and so pinned) until its next lookup
        in that dimension. A long-idle reader should call this now and then, so the coordinator
        can free superseded and evicted regions (workers do it while idle)."""
        dropped = 0
        with self._lock:
            for dv in list(self._dims.values()):
                if dv.current is not _NOT_MAPPED and self._dir_mv[dv.gen_pos] != dv.current.generation:
                    dv.current = _NOT_MAPPED
                    dropped += 1
        return dropped

    def stats(self) -> dict:
        """Allocator statistics plus readers and published generations (JSON-serialisable)."""
        words = self._inst.control.words
        out = self._inst.table.stats().as_dict()
        out["readers_attached"] = int(words[W.READERS_ATTACHED])
        out["readers_peak"] = int(words[W.READERS_PEAK])
        out["generations"] = {dim: self._dir.generation(e) for dim, e in self._dir.entries().items()}
        out["pin_epoch"] = int(words[W.PIN_EPOCH])
        out["max_pin_age"] = int(words[W.MAX_PIN_AGE_MS]) / 1e3
        out["pins"] = self.pins()
        out["pins_retained_bytes"] = _retained(out["pins"])
        out["thresholds"] = {"warn": int(words[W.WARN_PERMILLE]), "evict": int(words[W.EVICT_PERMILLE]),
                             "refuse": int(words[W.REFUSE_PERMILLE])}
        return out

    # ----------------------------------------------------------------- generations and pins

    def _entries(self) -> dict[int, int]:
        """{dimension id: entry} of every claimed entry, re-read only when W.DIR_VERSION moves."""
        version = self._dir.version()
        cached = self._entries_cache
        if cached is None or cached[0] != version:
            cached = self._entries_cache = (version, self._dir.entries())
        return cached[1]

    def _published(self) -> dict[int, int]:
        return {dim: e for dim, e in self._dir.entries().items() if self._dir.generation(e) > 0}

    def _check_open(self) -> None:
        if self._closed:
            raise ReaderClosed(name=self._inst.name, slot=self._slot)

    def _dimension(self, dimension_id: int) -> _DimView:
        with self._lock:
            self._check_open()
            self._start_watcher()
            dv = self._dims.get(dimension_id)
            if dv is not None:
                return dv
            published = self._published()
            entry = published.get(dimension_id)
            if entry is None:
                raise DimensionNotFound(dimension_id=dimension_id, available=list(published))
            dv = _DimView(dimension_id, entry)
            self._refresh(dv)
            self._dims[dimension_id] = dv
            return dv

    def _start_watcher(self) -> None:
        if self._watcher is None:  # only a reader that maps something can pin anything
            words = self._inst.control.words_mv  # not a bound method: the watcher holds us weakly
            self._watcher = PinWatcher(self, lambda: words[W.PIN_EPOCH], words[W.PIN_EPOCH])

    # ----------------------------------------------------------------- snapshots and wake-ups

    def snapshot(self, *, timeout: float | None = SNAPSHOT_TIMEOUT) -> Snapshot:
        """Pin one instant of every published dimension; use as ``with reader.snapshot() as snap:``.

        Lookups through the snapshot see each dimension at the generation it had at that
        instant, whatever is published meanwhile (multi-dimension commits included). Takes some
        tens of microseconds (it reads and pins every directory entry; each dimension is mapped
        on its first lookup). Raises SnapshotTimeout if a multi-dimension commit keeps the
        directory in flux for ``timeout`` seconds (None: wait for ever), or at once if the
        coordinator died in the middle of one; ReaderClosed on a closed reader.
        """
        return Snapshot.take(self, timeout)

    def _generation_at(self, dimension_id: int, entry: int, loc: Location,
                       holder: weakref.finalize) -> _Generation | None:
        """Generation ``loc`` for an open snapshot (``holder`` alive: its pin keeps the region);
        the reader's cached mapping when it is that one. None if the snapshot closed first."""
        with self._lock:
            self._check_open()
            self._start_watcher()
            dv = self._dims.get(dimension_id)
            if dv is None:
                dv = self._dims[dimension_id] = _DimView(dimension_id, entry)
            if dv.current.generation == loc.generation:
                return dv.current
            self._pins.hold(entry, loc.generation)  # the array's own, taken while the snapshot's holds
            if not holder.alive:
                self._pins.release(entry, loc.generation, from_collector=False)
                return None
            gen = self._map(dv, loc)  # releases the hold itself if it fails
            if self._dir_mv[dv.gen_pos] == loc.generation:
                dv.current = gen  # still the published one: the lookup path shares it
            return gen

    def wait_generation(self, dimension_id: int, *, after: int | None = None,
                        timeout: float | None = None) -> int:
        """Block until the dimension publishes a generation newer than ``after``; return it.

        ``after`` defaults to the generation published now. Returns at once if a newer one is
        already published. Sleeps on a semaphore the coordinator posts at every publication (no
        polling). Raises GenerationTimeout after ``timeout`` seconds (None: no limit),
        AttachError if the coordinator stops or dies meanwhile (noticed within about 0.25 s),
        ReaderClosed if this reader is closed meanwhile, DimensionNotFound if the dimension was
        never published.
        """
        dimension_id, pos, after = self._wait_args(dimension_id, after)
        return self._waiter().wait(dimension_id, pos, after, timeout)

    async def await_generation(self, dimension_id: int, *, after: int | None = None,
                               timeout: float | None = None) -> int:
        """The asyncio form of :meth:`wait_generation`: same arguments, result and errors.

        No thread per call: one thread per Reader waits on the semaphore for every waiter and
        completes their futures through their event loops."""
        dimension_id, pos, after = self._wait_args(dimension_id, after)
        return await self._waiter().wait_async(dimension_id, pos, after, timeout)

    def _wait_args(self, dimension_id: int, after: int | None) -> tuple[int, int, int]:
        dimension_id = as_id(dimension_id, "dimension_id")
        self._check_open()
        published = self._published()
        entry = published.get(dimension_id)
        if entry is None:
            raise DimensionNotFound(dimension_id=dimension_id, available=list(published))
        pos = Directory.generation_position(entry)
        return dimension_id, pos, int(self._dir_mv[pos]) if after is None else as_id(after, "after")

    def _waiter(self) -> GenerationWaiter:
        with self._lock:
            self._check_open()
            if self._waiter_obj is None:
                waiter = self._waiter_obj = GenerationWaiter(self._inst, self._slot)
                # Collected without close(): its dispatcher thread and semaphore go too.
                weakref.finalize(self, waiter.close, ReaderClosed(name=self._inst.name, slot=self._slot),
                                 row_ours=False).atexit = False
            return self._waiter_obj

    def _refresh(self, dv: _DimView) -> _Generation:
        """Switch ``dv`` to the published generation: pin, re-check, then map.

        An evicted generation has no region: ask the coordinator to reload it and wait (outside
        the lock, so other threads keep reading other dimensions) for the next generation."""
        deadline = None
        while True:
            with self._lock:
                if self._closed:
                    raise ReaderClosed(name=self._inst.name, slot=self._slot)
                loc = self._dir.read(dv.entry)
                if loc is None:
                    raise DimensionNotFound(dimension_id=dv.dimension_id, available=list(self._published()))
                if dv.current.generation == loc.generation:
                    return dv.current
                if not loc.evicted:
                    self._pins.hold(dv.entry, loc.generation)  # counted: _map's array releases it
                    if self._dir.generation(dv.entry) == loc.generation:
                        dv.current = self._map(dv, loc)
                        return dv.current
                    # Superseded while we pinned: it may be freed at any moment, so never touch it.
                    self._pins.release(dv.entry, loc.generation, from_collector=False)
                    continue
                dv.current = _NOT_MAPPED  # let the evicted region go from this process too
            if deadline is None:
                deadline = time.monotonic() + RELOAD_TIMEOUT
            self._await_reload(dv, loc.generation, deadline)

    def _await_reload(self, dv: _DimView, evicted_generation: int, deadline: float) -> None:
        mv = self._dir_mv
        while mv[dv.gen_pos] == evicted_generation:
            if mv[dv.touch_pos] != TOUCHED_RELOAD:  # first time, or the coordinator just reset it
                mv[dv.touch_pos] = TOUCHED_RELOAD
                self._inst.wake_coordinator()
            now = time.monotonic()
            if now > deadline:
                raise ReloadTimeout(dimension_id=dv.dimension_id, generation=evicted_generation,
                                    waited=RELOAD_TIMEOUT)
            if not self._inst.is_running():
                raise AttachError(name=self._inst.name, reason=f"its coordinator is stopping; dimension "
                                                               f"{dv.dimension_id} stays evicted")
            time.sleep(RELOAD_POLL)

    def _map(self, dv: _DimView, loc: Location) -> _Generation:
        """Views of a pinned generation: its layer index and the pools its layers live in.

        O(1): the header is checked against the directory (shmpool.data.layer_index.read_header); the
        rows and table were built, and the layers they point at checked, by the coordinator.
        The caller's hold of the pin becomes the mapping's: released when the last view of it
        goes, or here at once if mapping fails (a counted hold must be released exactly once)."""
        pin = _Pin()
        # Not at exit: a dead process's row and pins are dropped by the coordinator anyway.
        release = weakref.finalize(pin, self._pins.release, dv.entry, loc.generation)
        release.atexit = False
        try:
            seg = self._inst.pool_segment(loc.pool)
            offset = loc.first_block * self._inst.table.block_sizes[loc.pool]
            if offset + loc.nbytes > seg.size:
                raise RegionFormatError(source=f"dimension {dv.dimension_id} generation {loc.generation}",
                                        fault=f"layer index [{offset}, {offset + loc.nbytes}) lies outside "
                                              f"pool {loc.pool}")
            index = _pinned(seg.mm, offset, loc.nbytes, pin)
            header = layer_index.read_header(index, source=f"dimension {dv.dimension_id} generation {loc.generation}",
                                             dimension_id=dv.dimension_id, generation=loc.generation)
            used = header.pools
            pools = []
            for p in range(used.bit_length()):
                if used >> p & 1:
                    pseg = self._inst.pool_segment(p)
                    pools.append(memoryview(_pinned(pseg.mm, 0, pseg.size, pin)))
                else:
                    pools.append(None)
        except BaseException:
            release()
            raise
        return _Generation(dv.dimension_id, loc.generation, index, header, tuple(pools))

    def honour_epoch(self, epoch: int) -> None:
        """The coordinator published something: let go of superseded mappings, then say so.

        Called by the pin watcher thread; the acknowledgement follows the drop, so a reader
        whose EPOCH_SEEN has reached an epoch holds superseded generations only through
        contexts that are still alive."""
        with self._lock:
            if self._closed:
                raise ReaderClosed(name=self._inst.name, slot=self._slot)
            self.drop_stale()
            self._registry.acknowledge(self._slot, epoch)

    def pins(self) -> list[dict]:
        """Every pin of every attached reader: pid, dimension, generation, state, age, bytes
        retained (see shmpool.data.pins.PinRecord); read from shared memory."""
        return [p.as_dict() for p in list_pins(self._inst.control, self._inst.table.block_sizes)]

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """No more lookups; release this reader's row and unmap once no context is held (idempotent).

        Contexts (and ``content`` views) made by this reader stay valid: their generations stay
        pinned until they are dropped, and the row is released with the last of them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            dims, self._dims = self._dims, {}
            if self._watcher is not None:
                self._watcher.stop()
            if self._waiter_obj is not None:
                self._waiter_obj.close(ReaderClosed(name=self._inst.name, slot=self._slot))
        for dv in dims.values():
            dv.current = _NOT_MAPPED  # our own cached mappings go now; the user's contexts stay
        del dims
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"slot {self._slot}"
        return f"<Reader {self._inst.name!r} {state}>"


def _retained(pins: list[dict]) -> int:
    """Bytes of superseded regions kept by pins, each region counted once."""
    return sum({(p["dimension_id"], p["generation"]): p["bytes_retained"] for p in pins}.values())


def attach(name: str) -> Reader:
    """Attach to running instance ``name``; raises AttachError if no coordinator of that name runs."""
    inst = SharedInstance.attach(name)
    try:
        if not inst.is_running():
            raise AttachError(name=name, reason="its coordinator is stopping")
        return Reader(inst, owns_instance=True)
    except BaseException:
        inst.close()
        raise
