"""The one owner of a reader's mapped generations: its row, its pins, its views of each generation.

A :class:`MappedGenerations` is what a :class:`~shmpool.data.reader.Reader` and its
:class:`~shmpool.data.snapshot.Snapshot` s share (neither reaches into the other):

* the reader's **row** and its **pins** (shmpool/data/pins.py). A generation is touched only
  once pinned: the published one by *announce it in the cache word, then re-check GENERATION*
  (:meth:`refresh`), a snapshot's by the snapshot's own hold in the pin words (:meth:`at`);
* the **mapping** of a pinned generation (:meth:`_map`): a :class:`Generation`, one object
  holding buffer exports of the mappings it reads, whose deallocation releases the pin words'
  hold, if it has one, so any context, or bare ``content`` view (both hold it), keeps its
  generation pinned and its bytes exactly as they were, also after the reader is closed;
* the per-dimension cache the lookup path reads (``dims``: the core's DimTable of a DimView per
  dimension, holding its current Generation). The cached generation is pinned by the row's cache
  word (``Control.caches``), not by the pin words: the coordinator reclaims it from an idle reader as
  soon as nothing but the cache holds it (shmpool/_core/_lookup.pyx says how). When the cache
  lets go of a generation something else still holds, it first moves it into the pin words
  (:func:`_move_to_pins`). A lookup after a publication drops every superseded mapping
  (:meth:`honour_epoch`): no thread watches the epoch;
* the generation-wait dispatcher, and the object's side of fork() (shmpool/data/fork.py).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import weakref
from typing import Any, Iterator

from ..substrate._log import logger

from .._core._lookup import NOT_MAPPED, DimTable, DimView, Generation
from ..errors import AttachError, DimensionNotFound, ReaderClosed, ReaderForked, RegionFormatError, ReloadTimeout, \
    ShmPoolError
from ..substrate.instance import SharedInstance
from ..substrate.layout import CACHE_SHIFT, TOUCHED_RELOAD, CacheBit, W, Layout, cache_blocks, cache_word
from . import fork, layer_index
from .directory import Directory, Location
from .gen_wait import GenerationWaiter, own_copy
from .pins import RowPins, entries_used
from .readers import ReaderRegistry

__all__ = ["MappedGenerations", "DimView", "RELOAD_TIMEOUT"]

RELOAD_TIMEOUT = 10.0  # seconds a lookup waits for an evicted dimension to come back
RELOAD_POLL = 0.0005   # seconds between checks while waiting
_EPOCH = int(W.PIN_EPOCH)


def _move_to_pins(pins: RowPins, gen: Generation) -> None:
    """The cache lets go of ``gen`` while objects still hold it: the pin words hold it from now
    until the Generation goes (called before the cache word is cleared)."""
    if not gen.held:
        pins.hold(gen.entry, gen.generation)
        gen.held = True


def _reader_gone(dims: DimTable, pins: RowPins) -> None:
    """Closed or collected: the cache lets go of every generation (moving the held ones into the
    pin words), then the row goes now or with the last of them."""
    dims.clear()
    pins.reader_closed()


def _dim_view(dimension_id: int, entry: int, caches_mv: memoryview, slot: int, layout: Layout) -> DimView:
    """Where one dimension's words are (its directory words, this row's cache word for it), and
    (NOT_MAPPED until the first lookup) the generation the lookup path uses now: the core's DimView."""
    cache_pos = cache_word(layout, slot, entry)
    return DimView(dimension_id, entry, Directory.generation_position(entry), Directory.touched_position(entry),
                   caches_mv, cache_pos)


def _shutdown(registry: ReaderRegistry, slot: int, inst: SharedInstance | None) -> None:
    try:
        registry.unregister(slot)
    except ShmPoolError as exc:
        logger.debug("reader slot {} not released: {}", slot, exc)
    if inst is not None:
        inst.close()


class MappedGenerations:
    """A reader row of ``inst`` and every generation mapped through it. Thread-safe.

    ``close()`` ends new mappings; what is mapped stays until the last view of it is dropped,
    and the row is given back then (``owns_instance``: the instance is unmapped too)."""

    # Slots, no __dict__: one object per reader, ~200 B less of its private memory (issue 22).
    __slots__ = ("inst", "name", "directory", "dir_mv", "words_mv", "caches_mv", "_registry", "slot", "dims", "_lock",
                 "_closed", "_fork_error", "pins", "_move", "_finalizer", "_waiter", "_waiter_finalizer",
                 "_entries_cache", "snapshots", "__weakref__")

    def __init__(self, inst: SharedInstance, *, owns_instance: bool, timeout: float | None = None) -> None:
        self.inst = inst
        self.name = inst.name
        self.directory = Directory(inst.control)
        self.dir_mv = inst.control.directory_mv
        self.words_mv = inst.control.words_mv
        self.caches_mv = inst.control.caches_mv
        self._registry = ReaderRegistry(inst.control, inst.lock, inst.name)
        self.slot = self._registry.register(timeout)
        self.dims = DimTable()  # the lookup path's cache (the core's): cleared in place, never replaced
        self._lock = threading.RLock()
        self._closed = False
        self._fork_error: ReaderForked | None = None
        registry, owned = self._registry, inst if owns_instance else None
        # The pins outlive this object: views hold them (through their arrays' finalizers), and
        # the row is given back only when this is closed AND nothing is held.
        self.pins = RowPins(inst.control, self.slot, lambda slot: _shutdown(registry, slot, owned), registry)
        self._move = functools.partial(_move_to_pins, self.pins)  # a dropped generation objects still hold
        self.dims.move = self._move  # what the table's clear() does with those
        self._finalizer = weakref.finalize(self, _reader_gone, self.dims, self.pins)
        self._waiter: GenerationWaiter | None = None
        self._waiter_finalizer: weakref.finalize[Any, Any] | None = None
        self._entries_cache: tuple[int, dict[int, int]] | None = None
        # Open snapshots, so that a forked child that got no row of its own can make them refuse
        # too (made with the first snapshot: most readers take none).
        self.snapshots: "weakref.WeakSet[Any] | None" = None
        fork.track(self, self.pins)

    # ----------------------------------------------------------------- state

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise self.closed_error()

    @contextlib.contextmanager
    def open_section(self) -> Iterator[None]:
        """Hold the lock with this open: close() cannot unmap the control segment's views (the
        directory, the words, the reader table) under what reads them meanwhile. ReaderClosed if
        closed: once nothing is held any more, those views are released."""
        with self._lock:
            self.check_open()
            yield

    def closed_error(self) -> AttachError:
        if self._fork_error is not None:
            # A copy per raise: the one kept here would otherwise collect the traceback (frames,
            # locals) of every refused lookup, growing with each.
            return own_copy(self._fork_error)
        return ReaderClosed(name=self.name, slot=self.slot)

    def entries(self) -> dict[int, int]:
        """{dimension id: entry} of every claimed entry, re-read only when W.DIR_VERSION moves."""
        version = self.directory.version()
        cached = self._entries_cache
        if cached is None or cached[0] != version:
            cached = self._entries_cache = (version, self.directory.entries())
        return cached[1]

    def published(self) -> dict[int, int]:
        """{dimension id: entry} of every published dimension; ReaderClosed once closed."""
        with self.open_section():
            return {dim: e for dim, e in self.entries().items() if self.directory.generation(e) > 0}

    # ----------------------------------------------------------------- the published generations

    def dimension(self, dimension_id: int) -> DimView:
        """The dimension's view, its published generation mapped; DimensionNotFound, ReaderClosed."""
        with self._lock:
            self.check_open()
            dv = self.dims.get(dimension_id)
            if dv is not None:
                return dv
            # One entry's scan, not the {id: entry} dict of every entry (kept for entries(): a
            # reader that looks up by id needs none of it, ~0.6 kB; docs/performance.md issue 22).
            entry = self.directory.find(dimension_id)
            if entry is None or self.directory.generation(entry) <= 0:
                raise DimensionNotFound(dimension_id=dimension_id, available=list(self.published()))
            dv = _dim_view(dimension_id, entry, self.caches_mv, self.slot, self.inst.control.layout)
            self.dims[dimension_id] = dv  # mapped by the lookup's refresh
            return dv

    def refresh(self, dv: DimView) -> None:
        """Switch ``dv`` to the published generation: drop the cached one, announce the
        published one BUSY in the cache word, re-check GENERATION, then map it.

        An evicted generation has no region: ask the coordinator to reload it and wait (outside
        the lock, so other threads keep reading other dimensions) for the next generation."""
        deadline = None
        while True:
            with self._lock:
                self.check_open()
                loc = self.directory.read(dv.entry)
                if loc is None:
                    raise DimensionNotFound(dimension_id=dv.dimension_id, available=list(self.published()))
                word = dv.cache_word
                # BUSY here is, nearly always, no lookup of ours (theirs end before Python code runs;
                # a batch refusing a corrupt slot builds its exception with BUSY set): a stranger's
                # store, which the lookup would find again and again, for ever. Taken over below
                # (drop, announce, re-check, map), as a word we do not have: the drop first moves
                # what our objects hold into the pin words, so even a batch's generation stays held.
                if (dv.current.generation == loc.generation and word >> CACHE_SHIFT == loc.generation
                        and not word & CacheBit.BUSY):
                    return
                dv.drop(self._move)  # what our objects still hold moves into the pin words first
                if not loc.evicted:
                    if dv.enter(loc.generation, self.dir_mv) == loc.generation:
                        try:
                            gen = self._map(dv.dimension_id, dv.entry, loc, held=False)
                        except BaseException:
                            dv.leave()
                            raise
                        dv.install(gen)
                        return
                    # Superseded while we announced it: it may be freed at any moment, so never touch it.
                    dv.leave()
                    continue
            if deadline is None:
                deadline = time.monotonic() + RELOAD_TIMEOUT
            self._await_reload(dv, loc.generation, deadline)

    def _await_reload(self, dv: DimView, evicted_generation: int, deadline: float) -> None:
        mv = self.dir_mv
        while mv[dv.gen_pos] == evicted_generation:
            if mv[dv.touch_pos] != TOUCHED_RELOAD:  # first time, or the coordinator just reset it
                mv[dv.touch_pos] = TOUCHED_RELOAD
                self.inst.wake_coordinator()
            if time.monotonic() > deadline:
                raise ReloadTimeout(dimension_id=dv.dimension_id, generation=evicted_generation,
                                    waited=RELOAD_TIMEOUT)
            if not self.inst.is_running():
                raise AttachError(name=self.name, reason=f"its coordinator is stopping; dimension "
                                                         f"{dv.dimension_id} stays evicted")
            time.sleep(RELOAD_POLL)

    def at(self, dimension_id: int, entry: int, loc: Location,
           holder: "weakref.finalize[Any, Any]") -> Generation | None:
        """Generation ``loc`` for an open snapshot (``holder`` alive: its hold keeps the region),
        mapped for the snapshot alone: its pin-word hold keeps it, so the reader's cache (which
        the coordinator may reclaim when idle) is never shared with it. None if the snapshot
        closed first."""
        with self._lock:
            self.check_open()
            self.pins.hold(entry, loc.generation)  # the array's own, taken while the snapshot's holds
            if not holder.alive:
                self.pins.release(entry, loc.generation, from_collector=False)
                return None
            return self._map(dimension_id, entry, loc, held=True)  # releases the hold itself if it fails

    def _map(self, dimension_id: int, entry: int, loc: Location, *, held: bool) -> Generation:
        """Views of a pinned generation: its layer index and the pools its layers live in.

        O(1): the header is checked against the directory (layer_index.read_header); the rows
        and table were built, and the layers they point at checked, by the coordinator. With
        ``held``, the caller's pin-word hold becomes the mapping's: released when the last view
        of it goes, or here at once if mapping fails (a counted hold is released exactly once);
        without (the cache's, pinned by its cache word), only once moved there."""
        source = f"dimension {dimension_id} generation {loc.generation}"
        try:
            export = self.inst.pool_export(loc.pool)  # the Generation holds this shared view, not an export
            offset = loc.first_block * self.inst.block_size(loc.pool)
            if offset + loc.nbytes > len(export):
                raise RegionFormatError(source=source, fault=f"layer index [{offset}, {offset + loc.nbytes}) lies "
                                                             f"outside pool {loc.pool}")
            with export[offset:offset + loc.nbytes] as index:  # a slice: releasing it leaves the export
                header = layer_index.read_header(index, source=source, dimension_id=dimension_id,
                                                 generation=loc.generation)
            pools: list[Any] = [None] * header.pools.bit_length()
            for p in range(len(pools)):
                if header.pools >> p & 1:
                    pools[p] = self.inst.pool_buffer(p)
        except BaseException:
            if held:
                self.pins.release(entry, loc.generation)
            raise
        # From here the Generation owns the hold: its deallocation releases it, also if this raises.
        return Generation(dimension_id, loc.generation, export, offset, loc.nbytes, header, pools, entry, self.pins,
                          held)

    # ----------------------------------------------------------------- letting go

    def drop_stale(self) -> int:
        """Drop every cached mapping of a generation that is no longer published; how many."""
        dropped = 0
        with self._lock:
            for dv in self.dims.values():
                if dv.current is not NOT_MAPPED and self.dir_mv[dv.gen_pos] != dv.current.generation:
                    dropped += dv.drop(self._move)
        return dropped

    def honour_epoch(self, epoch: int) -> None:
        """The coordinator published something: let go of superseded mappings, then say so.

        Called by the lookup path (the core) at the first lookup that sees W.PIN_EPOCH moved;
        the acknowledgement follows the drop. An idle reader needs none of this: the cache word
        lets the coordinator reclaim what only its cache holds."""
        with self._lock:
            self.check_open()
            self.drop_stale()
            self._registry.acknowledge(self.slot, epoch)

    # ----------------------------------------------------------------- generation waits

    def wait_position(self, dimension_id: int, after: int | None) -> tuple[int, int]:
        """(directory position of the dimension's GENERATION word, ``after`` or the generation now)."""
        with self._lock:  # close() unmaps only after its own locked section: no view goes under us
            self.check_open()
            published = self.published()
            entry = published.get(dimension_id)
            if entry is None:
                raise DimensionNotFound(dimension_id=dimension_id, available=list(published))
            pos = Directory.generation_position(entry)
            return pos, int(self.dir_mv[pos]) if after is None else after

    def waiter(self) -> GenerationWaiter:
        with self._lock:
            self.check_open()
            if self._waiter is None:
                waiter = self._waiter = GenerationWaiter(self.inst, self.slot)
                # Collected without close(): its dispatcher thread and semaphore go too.
                self._waiter_finalizer = weakref.finalize(
                    self, waiter.close, ReaderClosed(name=self.name, slot=self.slot), row_ours=False)
                self._waiter_finalizer.atexit = False
            return self._waiter

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """No new mappings; the row is given back once nothing mapped is held (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._waiter is not None:
                self._waiter.close(ReaderClosed(name=self.name, slot=self.slot))
            # Our own cached mappings go now (what contexts still hold moves into the pin words);
            # the row goes now or with the last context.
            self._finalizer()

    def track_snapshot(self, snapshot: Any) -> None:
        """Remember an open snapshot (weakly) for :meth:`_fork_child`."""
        with self._lock:
            if self.snapshots is None:
                self.snapshots = weakref.WeakSet()
            self.snapshots.add(snapshot)

    # ----------------------------------------------------------------- fork (shmpool/data/fork.py)

    def _fork_prepare(self, timeout: float) -> bool:
        """Before fork(): hold our lock across it, so that no thread is half way through mapping
        a generation (pinned, not yet mapped) when the child's copy of this object is made."""
        got = self._lock.acquire(timeout=timeout)
        if not got:
            logger.warning("reader of {!r} forked while a thread held its lock for {} s", self.name, timeout)
        return got

    def _fork_parent(self) -> None:
        self._lock.release()

    def _fork_child(self) -> None:
        """In the child, after its row was handed over (or not: then every lookup says so).

        Threads do not cross fork(): the generation dispatcher is forgotten (its successor
        starts on demand). The cached mappings are dropped, what the child's objects still hold
        moving into the pin words of the child's row (the parent's cache words are never
        written: their copies in the child's row, USERS forced on at the copy, keep everything
        until then), so the child pins only what its own objects hold."""
        self._lock = threading.RLock()
        if self._waiter_finalizer is not None:
            self._waiter_finalizer.detach()  # it would post and close the parent's row's semaphore
            self._waiter_finalizer = None
        self._waiter = None
        self.slot = self.pins.slot
        if self.pins.lost is not None and not self._closed:
            self._fork_error = self.pins.lost
            self._closed = True
            for snap in list(self.snapshots or ()):
                snap.unmap()  # their next lookup asks us for the generation, and hears ReaderForked
        self.dims.clear(write=False)  # the views' cache words are the parent's
        if self.pins.lost is None:
            control = self.inst.control
            control.caches[self.slot, :cache_blocks(entries_used(control))] = 0  # the child's own row: after the moves above
        if not self._closed:
            self._registry.acknowledge(self.slot, int(self.words_mv[_EPOCH]))

