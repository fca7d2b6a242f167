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
* A child forked after ``attach`` gets a row of its own holding the pins of everything it
  inherited (shmpool/data/fork.py); the parent's row is never touched by the child.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Iterable, Iterator

import numpy as np
from loguru import logger

from .._core._lookup import NOT_MAPPED, DimView, Generation, ReaderCore
from .context import ContextCollection, LoadedContext, NavigationPath
from .directory import Directory, Location
from ..errors import (AttachError, DimensionNotFound, LayerNotFound, ReaderClosed, ReaderForked, RegionFormatError,
                     ReloadTimeout, ShmPoolError)
from . import fork
from .gen_wait import GenerationWaiter
from ..substrate.ids import as_id
from ..substrate.instance import SharedInstance
from ..substrate.layout import TOUCHED_READ, TOUCHED_RELOAD, W
from .pin_watch import PinWatcher
from .pins import RowPins, list_pins
from .readers import ReaderRegistry
from . import layer_index
from .snapshot import SNAPSHOT_TIMEOUT, Snapshot

__all__ = ["Reader", "attach", "RELOAD_TIMEOUT"]

RELOAD_TIMEOUT = 10.0  # seconds a lookup waits for an evicted dimension to come back
RELOAD_POLL = 0.0005   # seconds between checks while waiting
BATCH_TRIES = 3        # load_contexts re-reads a batch a publish cut through, then uses a snapshot
_SEQ = int(W.PUBLISH_SEQ)  # a plain int: indexing a memoryview with an IntEnum costs an __index__ call
_EPOCH = int(W.PIN_EPOCH)

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


_NOT_MAPPED = NOT_MAPPED   # stands in for a dropped generation: number -1, so the next lookup refreshes


def _dim_view(dimension_id: int, entry: int) -> DimView:
    return DimView(dimension_id, entry, Directory.generation_position(entry), Directory.touched_position(entry))


def _shutdown(registry: ReaderRegistry, slot: int, inst: SharedInstance | None) -> None:
    try:
        registry.unregister(slot)
    except ShmPoolError as exc:
        logger.debug("reader slot {} not released: {}", slot, exc)
    if inst is not None:
        inst.close()


class Reader(ReaderCore):
    """A process's view of the published dimensions of one instance. Thread-safe.

    Lookups never block and never copy. A context stays valid after :meth:`close` (and after
    the Reader is collected): its generation stays pinned, and the reader's row and mappings
    stay, until the last context (or ``content`` view) of that reader is dropped. Lookups on a
    closed reader raise :class:`~shmpool.errors.ReaderClosed`. Inherited through ``fork()``,
    the Reader, its snapshots and its contexts keep working in the child, through a row of the
    child's own (docs/usage.md, "Processes and fork").
    """

    def __init__(self, inst: SharedInstance, *, owns_instance: bool, timeout: float | None = None) -> None:
        self._inst = inst
        self._dir = Directory(inst.control)
        self._dir_mv = inst.control.directory_mv
        self._words_mv = inst.control.words_mv
        self._registry = ReaderRegistry(inst.control, inst.lock, inst.name)
        self._slot = self._registry.register(timeout)
        self._dims: dict[int, DimView] = {}
        self._core_attach(self._dir_mv, self._words_mv, _SEQ, TOUCHED_READ)
        self._lock = threading.RLock()
        self._closed = False
        self._fork_error: ReaderForked | None = None
        registry, owned = self._registry, inst if owns_instance else None
        # The pins outlive this object: contexts hold them (through their arrays' finalizers),
        # and the row is given back only when this reader is closed AND nothing is held.
        self._pins = RowPins(inst.control, self._slot, lambda slot: _shutdown(registry, slot, owned), registry)
        self._finalizer = weakref.finalize(self, self._pins.reader_closed)
        self._watcher: PinWatcher | None = None
        self._waiter_obj: GenerationWaiter | None = None
        self._waiter_finalizer: weakref.finalize | None = None
        self._entries_cache: tuple[int, dict[int, int]] | None = None
        fork.track(self, self._pins)

    @property
    def name(self) -> str:
        return self._inst.name

    @property
    def instance(self) -> SharedInstance:
        """The mapped instance this reader reads (its allocation table, the coordinator's words)."""
        return self._inst

    # ----------------------------------------------------------------- the hot path
    # load_layer_context and load_contexts are ReaderCore's (shmpool/_core/_lookup.pyx): the
    # lookup, the batch and its publish-sequence check run in C. What they call back here is
    # what runs once per publication or on first use: _dimension, _refresh, _batch_again.

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
        yield from gen.contexts(rows)

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
            raise self._closed_error()

    def _closed_error(self) -> AttachError:
        if self._fork_error is not None:
            return self._fork_error
        return ReaderClosed(name=self._inst.name, slot=self._slot)

    def _dimension(self, dimension_id: int) -> DimView:
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
            dv = _dim_view(dimension_id, entry)
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
                       holder: weakref.finalize) -> Generation | None:
        """Generation ``loc`` for an open snapshot (``holder`` alive: its pin keeps the region);
        the reader's cached mapping when it is that one. None if the snapshot closed first."""
        with self._lock:
            self._check_open()
            self._start_watcher()
            dv = self._dims.get(dimension_id)
            if dv is None:
                dv = self._dims[dimension_id] = _dim_view(dimension_id, entry)
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
        with self._lock:  # close() unmaps only after its own locked section: no view goes under us
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
                self._waiter_finalizer = weakref.finalize(
                    self, waiter.close, ReaderClosed(name=self._inst.name, slot=self._slot), row_ours=False)
                self._waiter_finalizer.atexit = False
            return self._waiter_obj

    def _refresh(self, dv: DimView) -> Generation:
        """Switch ``dv`` to the published generation: pin, re-check, then map.

        An evicted generation has no region: ask the coordinator to reload it and wait (outside
        the lock, so other threads keep reading other dimensions) for the next generation."""
        deadline = None
        while True:
            with self._lock:
                if self._closed:
                    raise self._closed_error()
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

    def _await_reload(self, dv: DimView, evicted_generation: int, deadline: float) -> None:
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

    def _map(self, dv: DimView, loc: Location) -> Generation:
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
        return Generation(dv.dimension_id, loc.generation, index, header, tuple(pools))

    def honour_epoch(self, epoch: int) -> None:
        """The coordinator published something: let go of superseded mappings, then say so.

        Called by the pin watcher thread; the acknowledgement follows the drop, so a reader
        whose EPOCH_SEEN has reached an epoch holds superseded generations only through
        contexts that are still alive."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
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

    # ----------------------------------------------------------------- fork (shmpool/data/fork.py)

    def _fork_prepare(self, timeout: float) -> bool:
        """Before fork(): hold our lock across it, so that no thread is half way through mapping
        a generation (pinned, not yet mapped) when the child's copy of this reader is made."""
        got = self._lock.acquire(timeout=timeout)
        if not got:
            logger.warning("reader of {!r} forked while a thread held its lock for {} s", self.name, timeout)
        return got

    def _fork_parent(self) -> None:
        self._lock.release()

    def _fork_child(self) -> None:
        """In the child, after its row was handed over (or not: then every lookup says so).

        Threads do not cross fork(): the pin watcher and the generation dispatcher are
        forgotten (their successors start on demand). The cached mappings are dropped, so the
        child pins only what its own contexts and snapshots hold until it looks something up."""
        self._lock = threading.RLock()
        self._watcher = None
        if self._waiter_finalizer is not None:
            self._waiter_finalizer.detach()  # it would post and close the parent's row's semaphore
            self._waiter_finalizer = None
        self._waiter_obj = None
        self._slot = self._pins.slot
        if self._pins.lost is not None and not self._closed:
            self._fork_error = self._pins.lost
            self._closed = True
        dims, self._dims = self._dims, {}
        for dv in dims.values():
            dv.current = _NOT_MAPPED  # the mappings' pins are released as their arrays go
        del dims
        if not self._closed:
            self._registry.acknowledge(self._slot, int(self._words_mv[_EPOCH]))

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


def attach(name: str, *, timeout: float | None = None) -> Reader:
    """Attach to running instance ``name``.

    Raises AttachError if no coordinator of that name runs, LockTimeout (naming the holder's
    pid) if the instance's table lock stays held for ``timeout`` seconds (None: wait as long
    as it takes; a stopped lock holder would make that for ever)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    inst = SharedInstance.attach(name)
    try:
        if not inst.is_running():
            raise AttachError(name=name, reason="its coordinator is stopping")
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return Reader(inst, owns_instance=True, timeout=remaining)
    except BaseException:
        inst.close()
        raise
