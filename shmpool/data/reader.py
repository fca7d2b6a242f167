"""Lock-free, zero-copy readers of a running instance: ``shmpool.attach(name) -> Reader``.

How a lookup stays cheap and safe:

* Per dimension the reader keeps views of the current generation: its layer index, built once
  by the coordinator in shared memory (shmpool/data/layer_index.py), and the pools its layers live in.
  O(1) Python objects per generation, none per layer. A lookup reads the dimension's published
  GENERATION word from shared memory; if it still matches, it probes the shared table and makes
  the context, in C (shmpool/_core/_lookup.pyx). No lock, no syscall, no logging.
* When the generation moved, the reader first PINS the new generation (one int64 store in its
  reader row), then checks GENERATION did not move again, and only then touches the region. The
  coordinator frees a superseded region only after a grace period and only if no live reader pins
  that generation, so a region cannot be freed under a reader that is about to use it.
* Every view a reader hands out is a slice of a per-generation numpy array whose lifetime holds
  the pin: while any LoadedContext (or the bare ``content`` memoryview) lives, that generation
  stays pinned, and its bytes stay exactly as they were, also after ``Reader.close()``. Pins are
  exact (shmpool/data/pins.py): holding generation 1 does not hold back 2, 3, ...
* The generation a reader keeps mapped for its lookups is pinned by the row's cache word only
  while a lookup is in progress or something made from it is alive (BUSY / USERS,
  shmpool/_core/_lookup.pyx): the coordinator reclaims it from a reader that idles after a
  publication, without the reader running; no thread watches anything. The first lookup after
  a publication drops every superseded mapping (W.PIN_EPOCH compared on each lookup).
* A child forked after ``attach`` gets a row of its own holding the pins of everything it
  inherited (shmpool/data/fork.py); the parent's row is never touched by the child.

The row, the pins and the mapping of generations belong to one object, shmpool/data/mapping.py,
shared with this reader's snapshots; the lookup and the batch are the compiled core's
(ReaderCore, which Reader subclasses). This module is the reader's API over them.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, TypeVar, overload

from ..errors import AttachError, DimensionNotFound, InvalidArgumentType, LayerNotFound
from ..substrate.ids import as_id
from ..substrate.instance import SharedInstance
from ..substrate.timeouts import check_timeout
from ..substrate.layout import TOUCHED_READ, W
from .._core._lookup import Generation, ReaderCore
from .context import ContextCollection, LoadedContext, NavigationPath, check_keyword
from .mapping import RELOAD_TIMEOUT, MappedGenerations
from .pins import list_pins
from .snapshot import SNAPSHOT_TIMEOUT, Snapshot

__all__ = ["Reader", "attach", "RELOAD_TIMEOUT"]

T = TypeVar("T")

_RAISE: Any = object()  # Reader.get without a default: an absent layer raises LayerNotFound
BATCH_TRIES = 3        # load_contexts re-reads a batch a publish cut through, then uses a snapshot
_SEQ = int(W.PUBLISH_SEQ)  # a plain int: indexing a memoryview with an IntEnum costs an __index__ call
_EPOCH = int(W.PIN_EPOCH)




class Reader(ReaderCore):
    """A process's view of the published dimensions of one instance. Thread-safe.

    Lookups never block and never copy. A context stays valid after :meth:`close` (and after
    the Reader is collected): its generation stays pinned, and the reader's row and mappings
    stay, until the last context (or ``content`` view) of that reader is dropped. Lookups on a
    closed reader raise :class:`~shmpool.errors.ReaderClosed`. Inherited through ``fork()``,
    the Reader, its snapshots and its contexts keep working in the child, through a row of the
    child's own (docs/usage.md, "Processes and fork").
    """

    # Slots, no __dict__: ~200 B less of each reader process's private memory (issue 22).
    __slots__ = ("_map", "_dims", "_dir_mv", "_words_mv", "_named", "__weakref__")

    def __init__(self, inst: SharedInstance, *, owns_instance: bool, timeout: float | None = None) -> None:
        self._map = MappedGenerations(inst, owns_instance=owns_instance, timeout=timeout)
        # What the lookup path reads, bound once (the owner clears ``dims`` in place, never replaces it).
        self._core_attach(self._map, _SEQ, TOUCHED_READ, _EPOCH)
        self._dims = self._map.dims
        self._dir_mv = self._map.dir_mv
        self._words_mv = self._map.words_mv
        self._named: dict[str, int] = {}  # dimension name -> id, checked against the name at each use

    @property
    def name(self) -> str:
        return self._map.name

    @property
    def instance(self) -> SharedInstance:
        """The mapped instance this reader reads (its allocation table, the coordinator's words)."""
        return self._map.inst

    # The names tests and tools have long read; the state itself is the mapping's.
    @property
    def _inst(self) -> SharedInstance:
        return self._map.inst

    @property
    def _slot(self) -> int:
        return self._map.slot

    # ----------------------------------------------------------------- the hot path
    @overload
    def get(self, dimension: int | str, layer: int | str) -> LoadedContext: ...

    @overload
    def get(self, dimension: int | str, layer: int | str, default: T) -> LoadedContext | T: ...

    def get(self, dimension: int | str, layer: int | str, default: Any = _RAISE) -> Any:
        """The layer ``layer`` (an id or a str key) of dimension ``dimension`` (an id or its name).

        :meth:`load_layer_context` with names and keys spelled out: zero-copy, O(1) (a key is its
        key id, one hash; a name is one dict lookup). Raises DimensionNotFound naming the
        dimensions there are, LayerNotFound naming the key, InvalidId for another type. With
        ``default``, an absent layer or key returns it instead, as ``dict.get`` does, and costs a
        probe rather than an exception (:meth:`find`); an unknown dimension still raises.
        """
        for _ in range(BATCH_TRIES):
            if default is not _RAISE:
                found = self.find(dimension, layer)
                if found is None:
                    return default
                ctx = found
            else:
                try:
                    ctx = self.load_layer_context(dimension, layer)  # ids, names and keys alike
                except LayerNotFound as exc:
                    if type(layer) is not str:
                        raise
                    raise LayerNotFound(dimension_id=exc.dimension_id, layer_id=repr(layer), generation=exc.generation,
                                        layer_count=exc.layer_count) from None
            # A name is resolved, then looked up: a publication in between may have renamed that
            # dimension (and given the name to another). The generation read says which it was.
            if type(dimension) is not str or ctx.dimension_name == dimension:
                return ctx
        raise DimensionNotFound(dimension_id=repr(dimension),
                                available=[f"{n!r} ({d})" for d, n in self.dimensions().items()])

    def dimension_id(self, name: str) -> int:
        """The id of the published dimension called ``name``; DimensionNotFound if there is none,
        InvalidArgumentType if ``name`` is no str."""
        if type(name) is not str:
            raise InvalidArgumentType(argument="name", value=name, reason="a dimension name is a str")
        found = self._named.get(name)
        # Checked against the published generation, not the one this reader mapped last: a
        # dimension may be renamed, and its old name given to another.
        try:
            if found is not None and found in self._dims and self._with_generation(found, _name) == name:
                return found
        except DimensionNotFound:
            pass  # no longer published: the scan below says which names are
        dimensions = self.dimensions()
        for dim_id, dim_name in dimensions.items():
            if dim_name == name:
                self._named[name] = dim_id
                return dim_id
        raise DimensionNotFound(dimension_id=repr(name), available=[f"{n!r} ({d})" for d, n in dimensions.items()])

    def _dimension(self, dimension: int | str) -> int:
        """A dimension argument as its id: a str is a name (:meth:`dimension_id`), anything else
        an id (InvalidId if it is none)."""
        return self.dimension_id(dimension) if type(dimension) is str else as_id(dimension, "dimension_id")

    def _ids(self, dimension: Any, layer: Any) -> tuple[int, int]:
        """Off the hot path (the core calls it for ids that are not both ints): a dimension by
        name, a layer by key, numpy integers; else InvalidId."""
        return self._dimension(dimension), as_id(layer, "layer_id")

    # load_layer_context and load_contexts are ReaderCore's (shmpool/_core/_lookup.pyx): the
    # lookup, the batch and its publish-sequence check run in C. They call back into the
    # mapping (first use of a dimension, a new generation: pin, re-check, map) and into
    # _batch_again below (a publish cut through a batch).

    def _batch_again(self, steps: NavigationPath, strict: bool) -> ContextCollection:
        """A publish cut through the batch: read it again, then through a snapshot (which
        waits for a commit in progress to end, or fails typed)."""
        for _ in range(BATCH_TRIES - 1):
            seq = self._publish_seq()
            if seq & 1:
                continue
            try:
                out = self._batch(steps, strict)
            except (DimensionNotFound, LayerNotFound):
                if self._publish_seq() == seq:
                    raise
                continue
            if self._publish_seq() == seq:
                return out
        with self.snapshot() as snap:
            return snap.load_contexts(steps, strict=strict)

    def _publish_seq(self) -> int:
        """W.PUBLISH_SEQ, read where close() cannot unmap it meanwhile; ReaderClosed once closed."""
        with self._map.open_section():
            return int(self._words_mv[_SEQ])

    def scan(self, dimension_id: int | str, keyword: str | None = None) -> Iterator[LoadedContext]:
        """Every layer of the dimension's current generation (in layer id order), or only those
        tagged ``keyword``. The generation is fixed when the scan starts."""
        dimension_id = self._dimension(dimension_id)
        keyword = check_keyword(keyword)
        gen: Generation | None = self._checkout_generation(dimension_id)  # USERS set while we hold it
        try:
            assert gen is not None
            rows = range(gen.layer_count) if keyword is None else gen.rows_with_keyword(keyword)
            dv = self._dims.get(dimension_id)
            if dv is not None:
                self._dir_mv[dv.touch_pos] = max(self._dir_mv[dv.touch_pos], TOUCHED_READ)
            yield from gen.contexts(rows)
        finally:
            gen = None
            self._settle_generation(dimension_id)  # the contexts still alive keep USERS set

    def _with_generation(self, dimension_id: int, use: Callable[[Generation], T]) -> T:
        """``use(generation)`` on the dimension's published generation, held for the call only."""
        try:
            return use(self._checkout_generation(dimension_id))
        finally:
            self._settle_generation(dimension_id)

    # ----------------------------------------------------------------- introspection

    def generation(self, dimension_id: int | str) -> int:
        """The currently published generation of the dimension."""
        dimension_id = self._dimension(dimension_id)
        with self._map.open_section():  # close() cannot unmap the directory under the read
            dv = self._dims.get(dimension_id) or self._map.dimension(dimension_id)
            return int(self._dir_mv[dv.gen_pos])

    def dimensions(self) -> dict[int, str]:
        """{dimension id: name} of every published dimension."""
        out = {}
        for dim_id in sorted(self._map.published()):
            try:
                out[dim_id] = self._with_generation(dim_id, _name)
            except DimensionNotFound:
                continue
        return out

    def layer_ids(self, dimension_id: int | str) -> list[int]:
        return self._with_generation(self._dimension(dimension_id), _layer_ids)

    def drop_stale(self) -> int:
        """Let go of every generation that is no longer the published one; returns how many.

        Not needed for memory: the coordinator reclaims a superseded generation that only the
        reader's cache holds without the reader running, and the first lookup after a
        publication drops every superseded mapping. This also lets go of the local objects now."""
        return self._map.drop_stale()

    def stats(self) -> dict[str, Any]:
        """Allocator statistics plus readers and published generations (JSON-serialisable).
        ReaderClosed on a closed reader."""
        with self._map.open_section():  # the views it reads stay mapped meanwhile
            return self._stats()

    def _stats(self) -> dict[str, Any]:
        inst, directory = self._map.inst, self._map.directory
        words = inst.control.words
        out: dict[str, Any] = inst.table.stats().as_dict()
        out["readers_attached"] = int(words[W.READERS_ATTACHED])
        out["readers_peak"] = int(words[W.READERS_PEAK])
        out["generations"] = {dim: directory.generation(e) for dim, e in directory.entries().items()}
        out["pin_epoch"] = int(words[W.PIN_EPOCH])
        out["max_pin_age"] = int(words[W.MAX_PIN_AGE_MS]) / 1e3
        out["pins"] = self.pins()
        out["pins_retained_bytes"] = _retained(out["pins"])
        out["thresholds"] = {"warn": int(words[W.WARN_PERMILLE]), "evict": int(words[W.EVICT_PERMILLE]),
                             "refuse": int(words[W.REFUSE_PERMILLE])}
        return out

    def pins(self) -> list[dict[str, Any]]:
        """Every pin of every attached reader: pid, dimension, generation, state, age, bytes
        retained (see shmpool.data.pins.PinRecord); read from shared memory. ReaderClosed on a
        closed reader."""
        inst = self._map.inst
        with self._map.open_section():
            return [p.as_dict() for p in list_pins(inst.control, inst.table.block_sizes)]

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
        return Snapshot.take(self._map, check_timeout(timeout))

    def wait_generation(self, dimension_id: int | str, *, after: int | None = None,
                        timeout: float | None = None) -> int:
        """Block until the dimension publishes a generation newer than ``after``; return it.

        ``after`` defaults to the generation published now. Returns at once if a newer one is
        already published. Sleeps on a semaphore the coordinator posts at every publication (no
        polling). Raises GenerationTimeout after ``timeout`` seconds (None: no limit),
        AttachError if the coordinator stops or dies meanwhile (noticed within about 0.25 s),
        ReaderClosed if this reader is closed meanwhile, DimensionNotFound if the dimension was
        never published; InvalidArgument for a NaN ``timeout``, InvalidArgumentType for one that
        is no number (shmpool/substrate/timeouts.py: beyond 1e9 s is no deadline).
        """
        timeout = check_timeout(timeout)
        dimension_id, pos, after = self._wait_args(dimension_id, after)
        return self._map.waiter().wait(dimension_id, pos, after, timeout)

    async def await_generation(self, dimension_id: int | str, *, after: int | None = None,
                               timeout: float | None = None) -> int:
        """The asyncio form of :meth:`wait_generation`: same arguments, result and errors.

        No thread per call: one thread per Reader waits on the semaphore for every waiter and
        completes their futures through their event loops."""
        timeout = check_timeout(timeout)
        dimension_id, pos, after = self._wait_args(dimension_id, after)
        return await self._map.waiter().wait_async(dimension_id, pos, after, timeout)

    def _wait_args(self, dimension_id: int | str, after: int | None) -> tuple[int, int, int]:
        dimension_id = self._dimension(dimension_id)
        pos, after = self._map.wait_position(dimension_id, None if after is None else as_id(after, "after"))
        return dimension_id, pos, after

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """No more lookups; release this reader's row and unmap once no context is held (idempotent).

        Contexts (and ``content`` views) made by this reader stay valid: their generations stay
        pinned until they are dropped, and the row is released with the last of them."""
        self._map.close()

    @property
    def closed(self) -> bool:
        return self._map.closed

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._map.closed else f"slot {self._map.slot}"
        return f"<Reader {self._map.name!r} {state}>"


def _name(gen: Generation) -> str:
    return gen.name


def _layer_ids(gen: Generation) -> list[int]:
    return gen.layer_ids()


def _retained(pins: list[dict[str, Any]]) -> int:
    """Bytes of superseded regions kept by pins, each region counted once."""
    return sum({(p["dimension_id"], p["generation"]): p["bytes_retained"] for p in pins}.values())


def attach(name: str, *, timeout: float | None = None) -> Reader:
    """Attach to running instance ``name``.

    Raises AttachError if no coordinator of that name runs, LockTimeout (naming the holder's
    pid) if the instance's table lock stays held for ``timeout`` seconds (None: wait as long
    as it takes; a stopped lock holder would make that for ever)."""
    timeout = check_timeout(timeout)
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
