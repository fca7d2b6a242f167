"""Placing generations into shared memory, publishing them, and freeing what they supersede.

The coordinator is the directory's single writer; everything that changes which generation a
dimension points at goes through :class:`Publisher`. A published generation is a *layer index*
in an allocation of its own (shmpool/data/layer_index.py; the directory points at it) whose rows
point at layer bytes in *data allocations*: a whole region copied from a file or written by a
RegionBuilder, or the few layers an edit changed (:meth:`Publisher.publish_edit`), next to
allocations of earlier generations whose layers it kept (layer-level copy-on-write).

Reclamation rule: a superseded generation is released once (a) GRACE seconds have passed since
it was superseded, (b) no live reader pins that very generation (pins are exact,
shmpool/data/pins.py), and (c) no edit in progress was started from it. Releasing it frees its layer
index and drops its reference to each data allocation; a data allocation is freed when the last
generation referencing it is released (the counts live here, on the coordinator's heap: single
writer, nothing for a crashed reader to leave behind). (a) covers the instant between a reader's
pin store and its re-check of the generation, during which the store may still sit in a CPU
store buffer; it drains in nanoseconds, so 10 ms is a wide margin. (b) is the real rule, and
nothing overrides it while the pinning process lives: a pin older than ``max_pin_age`` is
logged and listed as stale, never freed, because its reader may still read that memory. Only a
dead reader's pins are dropped.

Each publication bumps W.PIN_EPOCH, which a reader's next lookup compares to let go of the
mappings it no longer needs; a reader that makes no lookup needs nothing of the kind, since the
generation it merely caches pins only while its cache word says a lookup is in progress or an
object over it lives (shmpool/_core/_lookup.pyx); each allocation's record is tagged with its dimension and
the generation that created it (and when no current generation references it any more) so that
any process can list what a pin retains.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
from shmpool.substrate._log import logger

from shmpool.data import layer_index
from shmpool.substrate.alloc import Handle
from shmpool.data.directory import Directory, Location
from shmpool.substrate import _faults
from shmpool.errors import (DimensionNotFound, EditConflict, GenerationNotNewer, InvalidArgument, RegionFormatError,
                            ShmPoolError)
from shmpool.data.gen_wait import GenerationNotifier
from shmpool.substrate.instance import SharedInstance
from shmpool.data.layer_index import ROW_DTYPE
from shmpool.substrate.layout import RT, W
from shmpool.data.readers import ReaderRegistry
from shmpool.data.region import FLAG_KEYED, FLAG_TEXT, FLAG_ZSTD, Region, align
from shmpool.data.region_builder import RegionBuilder

__all__ = ["Published", "Evicted", "Publisher", "NewLayer", "Placement", "EditPlacement", "GRACE", "MAX_PIN_AGE"]

GRACE = 0.010
MAX_PIN_AGE = 60.0  # seconds a live reader may block a superseded region before it is called stale
NO_BLOCK = -1       # row_blocks value of a layer that occupies no bytes (empty, no keywords)


@dataclass
class Published:
    """One generation of one dimension placed in shared memory."""
    dimension_id: int
    name: str
    generation: int
    entry: int
    handle: Handle                # the allocation starting with its layer index (the directory points at it)
    source: str
    layer_count: int
    rows: np.ndarray              # heap copy of the index rows (ROW_DTYPE, by layer id)
    row_blocks: np.ndarray        # per row: record of the data allocation holding it, or NO_BLOCK
    row_counts: dict[int, int]    # record -> rows held there (an edit updates it in O(changes))
    blocks: dict[int, Handle]     # every allocation it uses (its index's included), by record
    table: np.ndarray             # heap copy of its lookup table (an edit that keeps the ids copies it)
    slot_of: np.ndarray           # per row: its slot in the table
    region: tuple[Handle, int, int] | None = None  # (allocation, offset, nbytes) of a region holding exactly this generation
    file: Path | None = None      # a region file holding exactly these bytes (reload source)
    compressed: bool = False      # published by cold-layer compression
    mapped: bool = False          # its layers are served from a mapped region file (placed by place_mapped)
    published_at: float = field(default_factory=time.time)
    superseded_at: float | None = None   # time.monotonic()
    superseded_epoch: int = 0             # W.PIN_EPOCH after the publication that superseded it

    @property
    def data_nbytes(self) -> int:
        """Bytes of the region this generation is, or of every allocation it uses (an edit's)."""
        return self.region[2] if self.region is not None else self.nbytes

    @property
    def nbytes(self) -> int:
        """Bytes of every allocation this generation uses (its index's and the shared ones)."""
        return sum(h.nbytes for h in self.blocks.values())

    def as_dict(self) -> dict[str, Any]:
        def alloc(h: Handle) -> dict[str, int]:
            return {"pool": h.pool, "first_block": h.first_block, "block_count": h.block_count,
                    "record": h.record, "nbytes": h.nbytes}

        return {
            "dimension_id": self.dimension_id, "name": self.name, "generation": self.generation,
            "source": self.source, "layer_count": self.layer_count, "nbytes": self.nbytes,
            "allocation": alloc(self.handle), "blocks": [alloc(h) for h in self.blocks.values()],
            "file": None if self.file is None else str(self.file), "compressed": self.compressed,
            "published_at": self.published_at, "superseded_at": self.superseded_at,
        }


@dataclass
class Evicted:
    """A dimension whose current generation has no region; reloaded from ``file`` on request."""
    dimension_id: int
    name: str
    entry: int
    generation: int
    file: Path
    layer_count: int
    evicted_at: float = field(default_factory=time.time)
    # ``file``'s (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) when it held the bytes:
    # a reload from a file changed since (replaced, rewritten) would serve other bytes.
    identity: tuple[int, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"dimension_id": self.dimension_id, "name": self.name, "generation": self.generation,
                "file": str(self.file), "layer_count": self.layer_count, "evicted_at": self.evicted_at}


@dataclass(frozen=True)
class NewLayer:
    """A layer an edit adds or replaces, as it will be stored (RegionBuilder's validated form)."""
    layer_id: int
    stored: bytes        # the content as stored: raw, or u64 length + zstd frame when FLAG_ZSTD
    flags: int
    crc32: int
    frequency: float
    keyword_bytes: bytes
    key: bytes | None = None  # FLAG_KEYED: the key's UTF-8 text, written after the keywords


class Placement(NamedTuple):
    """One region for :meth:`Publisher.place_many`: what :meth:`Publisher.place` takes."""
    nbytes: int
    write: Callable[[memoryview], object]
    layer_count: int
    name: str
    source: str
    dimension_id: int                  # the region must hold this dimension


class EditPlacement(NamedTuple):
    """One edit for :meth:`Publisher.place_many`: what :meth:`Publisher.publish_edit` takes."""
    dimension_id: int
    base_generation: int
    layers: tuple[NewLayer, ...]
    removed: tuple[int, ...]
    source: str


@dataclass
class _Staged:
    """A generation written (its layer index included) and tagged, not yet visible: what a
    commit publishes. ``own_index`` is the index allocation staging made (freed if the commit
    never happens), None when the index lives in the caller's allocation."""
    location: Location
    pub: Published
    own_index: Handle | None
    new_blocks: list[Handle]


class Publisher:
    """Writes generations into pool blocks and publishes them. Thread-safe."""

    def __init__(self, inst: SharedInstance, *, max_pin_age: float = MAX_PIN_AGE) -> None:
        self._inst = inst
        self.directory = Directory(inst.control)
        self.registry = ReaderRegistry(inst.control, inst.lock, inst.name)
        self.current: dict[int, Published] = {}
        self.superseded: list[Published] = []
        self.evicted: dict[int, Evicted] = {}
        self.max_pin_age = max_pin_age
        inst.control.words[W.MAX_PIN_AGE_MS] = int(max_pin_age * 1e3)  # so every process can list stale pins
        self._warned: set[tuple[int, int, int, int]] = set()  # (pid, slot, entry, generation)
        self._refs: Counter[int] = Counter()        # data allocation record -> unreleased generations using it
        self._holds: Counter[tuple[int, int]] = Counter()  # (dimension, generation) edits start from
        self._lock = threading.Lock()
        self.wakeups = GenerationNotifier(inst)  # posts reader.wait_generation callers
        self.published_at = 0.0  # time.monotonic() of the last publication (the reaper's short rounds)
        # Set by the coordinator's reaper before it decides on a long sleep, cleared when it wakes:
        # a publication then posts its wake semaphore, once (a burst of publications while the
        # reaper runs short rounds, or before it starts, posts nothing: no backlog of wake-ups).
        self.wake_reaper = False

    # ----------------------------------------------------------------- publishing

    def place(self, nbytes: int, write: Callable[[memoryview], object], *, layer_count: int, name: str,
              source: str, expect_dimension: int | None = None, file: Path | None = None,
              compressed: bool = False, generation: int | None = None, replaces: int | None = None) -> int:
        """Allocate room for a region of ``nbytes`` and its layer index, let ``write`` fill the
        region, check it, publish it; returns the new generation.

        ``layer_count`` and ``name`` are what the region will hold (its header says so), so
        that the index's size is known before anything is written: one allocation holds the
        index, then the region. The region's structure is checked (Region.from_buffer; content
        checksums excepted: they were checked where the bytes came from). On any failure the
        blocks are freed before the error propagates: a half-placed dimension leaves nothing
        allocated. ``generation`` publishes as that generation instead of the next one (a cluster
        agreeing on one number for every host); GenerationNotNewer if it does not exceed the
        current one. ``replaces``: the generation this publication was made from (a reload of
        an evicted one, a recompression of the current one); EditConflict, publishing nothing,
        if the dimension is at another generation by the time it commits (the program published
        it meanwhile: the copy is out of date).
        """
        handle, region_at, dimension_id, rows = self._write_region(nbytes, write, layer_count=layer_count, name=name,
                                                                   source=source, expect_dimension=expect_dimension)
        try:
            row_blocks = np.full(len(rows), handle.record, dtype=np.int64)
            with self._lock:
                return self._publish_locked(dimension_id, name, rows, row_blocks, {handle.record: len(rows)},
                                            {handle.record: handle},
                                            [handle], source=source, index=handle, region=(handle, region_at, nbytes),
                                            file=file, compressed=compressed, generation=generation,
                                            replaces=replaces)
        except BaseException:
            self._inst.table.free(handle)
            raise

    def place_mapped(self, pool: int, nbytes: int, *, layer_count: int, name: str, source: str,
                     expect_dimension: int, file: Path | None = None) -> int:
        """Publish the region in the served file of pool number ``pool`` (SharedInstance.add_file)
        without copying it: only its layer index is allocated, and its rows point into the file.

        The region's structure is checked on the mapping, as :meth:`place` checks a copy; the
        content was checked when the file was made (coordinator/region_store.py). The file stays
        mapped while the instance lives, so its generations need no allocation of their own:
        releasing one frees its index only."""
        seg = self._inst.pool_segment(pool)
        view = memoryview(seg.mm)[:nbytes]
        try:
            region = Region.from_buffer(view, source=source, verify_checksums=False)
            if region.dimension_id != expect_dimension or region.layer_count != layer_count or region.name != name:
                raise RegionFormatError(source=source, fault=f"holds {region.layer_count} layers of dimension "
                                                             f"{region.dimension_id} ({region.name!r}), expected "
                                                             f"{layer_count} of {expect_dimension} ({name!r})")
            rows = _rows_of_region(region, pool, 0)
            del region
        finally:
            view.release()
        with self._lock:
            return self._commit_locked([self._stage_locked(
                expect_dimension, name, rows, np.full(len(rows), NO_BLOCK, dtype=np.int64), {NO_BLOCK: len(rows)},
                {}, [], source=source, file=file, mapped=True)])[0]

    @staticmethod
    def region_allocation(nbytes: int, *, layer_count: int, name: str) -> tuple[int, int]:
        """(bytes :meth:`place` asks the allocator for, for a region of ``nbytes`` holding
        ``layer_count`` layers of dimension name ``name``; the region's offset in them): its
        layer index comes first, in the same allocation."""
        region_at = align(layer_index.index_nbytes(len(name.encode("utf-8")), layer_count))
        return region_at + nbytes, region_at

    def _write_region(self, nbytes: int, write: Callable[[memoryview], object], *, layer_count: int, name: str,
                      source: str, expect_dimension: int | None) -> tuple[Handle, int, int, np.ndarray]:
        """Allocate the index and region, let ``write`` fill the region, check it: (allocation,
        the region's offset in it, its dimension id, its index rows). Frees what it allocated on
        failure."""
        table = self._inst.table
        request, region_at = self.region_allocation(nbytes, layer_count=layer_count, name=name)
        handle = table.allocate(request)
        try:
            view = self._inst.handle_view(handle)
            region_view = view[region_at:]
            write(region_view)
            region = Region.from_buffer(region_view, source=source, verify_checksums=False)
            dimension_id = region.dimension_id
            if expect_dimension is not None and dimension_id != expect_dimension:
                raise RegionFormatError(source=source, fault=f"holds dimension {dimension_id}, "
                                                             f"expected {expect_dimension}")
            if region.layer_count != layer_count or region.name != name:
                raise RegionFormatError(source=source, fault=f"holds {region.layer_count} layers of {region.name!r}, "
                                                             f"expected {layer_count} of {name!r}")
            base = handle.first_block * table.block_sizes[handle.pool] + region_at
            rows = _rows_of_region(region, handle.pool, base)
            del region
            region_view.release()
            view.release()
        except BaseException:
            table.free(handle)
            raise
        return handle, region_at, dimension_id, rows

    def publish_edit(self, dimension_id: int, base_generation: int, layers: Iterable[NewLayer],
                     removed: Iterable[int], *, source: str, generation: int | None = None) -> int:
        """Publish generation ``base_generation`` with ``removed`` layers gone and ``layers`` added
        or replaced; returns the new generation.

        Only the new layers' bytes are written, into one allocation of their own; every other
        row points where the base generation's does (copy-on-write by layer). Raises
        EditConflict if the dimension moved past ``base_generation`` meanwhile (nothing is
        allocated then), LimitExceeded / AllocationFailed if the new bytes or index do not fit.
        """
        layers, offsets, handle = self._allocate_edit(layers)
        try:
            with self._lock:
                staged = self._stage_edit_locked(dimension_id, base_generation, layers, offsets, handle, removed,
                                                 source=source, generation=generation)
                return self._commit_locked([staged])[0]
        except BaseException:
            if handle is not None:
                self._inst.table.free(handle)
            raise

    def _allocate_edit(self, layers: Iterable[NewLayer]) -> tuple[list[NewLayer], list[int], Handle | None]:
        """Room for an edit's new layer bytes: (layers by id, their offsets, the allocation or None)."""
        layers = sorted(layers, key=lambda layer: layer.layer_id)
        offsets, at = [], 0
        for layer in layers:
            at = align(at)
            offsets.append(at)
            at += len(layer.stored) + len(layer.keyword_bytes) + len(layer.key or b"")
        return layers, offsets, self._inst.table.allocate(at) if at else None

    def _stage_edit_locked(self, dimension_id: int, base_generation: int, layers: list[NewLayer], offsets: list[int],
                           handle: Handle | None, removed: Iterable[int], *, source: str,
                           generation: int | None) -> _Staged:
        """Write an edit's layers into ``handle`` and stage its generation (EditConflict if the
        dimension moved past ``base_generation``). The caller frees ``handle`` on failure."""
        table = self._inst.table
        base = self.current.get(dimension_id)
        if base is None or base.generation != base_generation:
            raise EditConflict(dimension_id=dimension_id, base_generation=base_generation,
                               current_generation=self.directory.generation(base.entry) if base else None)
        new = np.zeros(len(layers), dtype=ROW_DTYPE)
        if handle is not None:
            view = self._inst.handle_view(handle)
            base_at = handle.first_block * table.block_sizes[handle.pool]
            for layer, off in zip(layers, offsets):
                end = off + len(layer.stored)
                view[off:end] = layer.stored
                view[end:end + len(layer.keyword_bytes)] = layer.keyword_bytes
                if layer.key:
                    end += len(layer.keyword_bytes)
                    view[end:end + len(layer.key)] = layer.key
            view.release()
            start = base_at + np.array(offsets, dtype=np.int64)
            new["pool"] = handle.pool
        else:
            start = np.zeros(len(layers), dtype=np.int64)
        lengths = np.array([len(layer.stored) for layer in layers], dtype=np.int64)
        new["layer_id"] = [layer.layer_id for layer in layers]
        new["start"], new["end"] = start, start + lengths
        new["kw_start"] = start + lengths
        new["kw_end"] = new["kw_start"] + np.array([len(layer.keyword_bytes) for layer in layers], dtype=np.int64)
        keyed = np.array([layer.key is not None for layer in layers], dtype=bool)
        new["key_start"] = np.where(keyed, new["kw_end"], 0)
        new["key_end"] = new["key_start"] + np.array([len(layer.key or b"") for layer in layers], dtype=np.int64)
        new["frequency"] = [layer.frequency for layer in layers]
        new["flags"] = [layer.flags for layer in layers]
        new["crc32"] = [layer.crc32 for layer in layers]
        rows, row_blocks, counts, table_copy = _merge(base, new, NO_BLOCK if handle is None else handle.record,
                                                      sorted(removed))
        blocks = {rec: base.blocks[rec] for rec in counts if rec in base.blocks}
        if handle is not None:
            blocks[handle.record] = handle
        return self._stage_locked(dimension_id, base.name, rows, row_blocks, counts, blocks,
                                  [] if handle is None else [handle], source=source,
                                  table=table_copy, slot_of=base.slot_of, generation=generation)

    def place_many(self, items: Sequence[Placement | EditPlacement]) -> list[int]:
        """Place every region and edit, then publish them all as one commit; returns their
        generations (each dimension's next one), in order.

        All or nothing: every allocation is made, written and checked and every layer index
        built before the first directory store, and any failure frees what was placed and
        publishes nothing (InvalidArgument for a repeated dimension, RegionFormatError,
        EditConflict, DirectoryFull, LimitExceeded, AllocationFailed). Readers see the
        GENERATION words change inside one W.PUBLISH_SEQ bracket (Directory.commit), so a
        snapshot or a batch sees all of them or none."""
        ids = [p.dimension_id for p in items]
        if len(set(ids)) != len(ids):
            raise InvalidArgument(argument="dimension_ids", value=ids, reason="a dimension appears twice")
        table = self._inst.table
        handles: list[Handle] = []   # data allocations: freed on failure
        written: list[tuple[Any, ...]] = []  # per item: what staging needs beyond the item
        staged: list[_Staged] = []
        committing = False
        try:
            for p in items:  # the slow part (allocation, copying, checks) outside the lock
                if isinstance(p, Placement):
                    handle, region_at, _, rows = self._write_region(p.nbytes, p.write, layer_count=p.layer_count,
                                                                    name=p.name, source=p.source,
                                                                    expect_dimension=p.dimension_id)
                    handles.append(handle)
                    written.append((handle, region_at, rows))
                else:
                    layers, offsets, edit_handle = self._allocate_edit(p.layers)
                    if edit_handle is not None:
                        handles.append(edit_handle)
                    written.append((edit_handle, layers, offsets))
            with self._lock:
                # Entries are claimed while staging, so DirectoryFull comes before anything is
                # visible; an entry claimed and left unpublished reads as "not published" and
                # is reused.
                for p, w in zip(items, written):
                    if isinstance(p, Placement):
                        handle, region_at, rows = w
                        staged.append(self._stage_locked(
                            p.dimension_id, p.name, rows, np.full(len(rows), handle.record, dtype=np.int64),
                            {handle.record: len(rows)}, {handle.record: handle}, [handle], source=p.source,
                            index=handle, region=(handle, region_at, p.nbytes)))
                    else:
                        handle, layers, offsets = w
                        staged.append(self._stage_edit_locked(p.dimension_id, p.base_generation, layers, offsets,
                                                              handle, p.removed, source=p.source, generation=None))
                committing = True  # from here on the generations may be visible: never free them
                generations = self._commit_locked(staged)
        except BaseException:
            if not committing:
                for st in staged:
                    if st.own_index is not None:
                        table.free(st.own_index)
                for h in handles:
                    table.free(h)
            raise
        return generations

    def _publish_locked(self, *args: Any, **kwargs: Any) -> int:
        """Stage one generation (:meth:`_stage_locked`, same arguments) and commit it alone."""
        return self._commit_locked([self._stage_locked(*args, **kwargs)])[0]

    def _stage_locked(self, dimension_id: int, name: str, rows: np.ndarray, row_blocks: np.ndarray,
                      row_counts: dict[int, int], blocks: dict[int, Handle], new_blocks: list[Handle], *, source: str,
                      index: Handle | None = None, region: tuple[Handle, int, int] | None = None,
                      file: Path | None = None, compressed: bool = False, table: np.ndarray | None = None,
                      slot_of: np.ndarray | None = None, generation: int | None = None,
                      mapped: bool = False, replaces: int | None = None) -> _Staged:
        """Write the layer index (at the start of ``index``, or of an allocation of its own) and
        tag the allocations; nothing is visible yet. ``new_blocks`` are the data allocations
        this generation created (they get its tag); the caller frees them on failure. An index
        allocation made here is freed here if staging fails, and named by the _Staged after."""
        alloc = self._inst.table
        known = self.current.get(dimension_id) or self.evicted.get(dimension_id)
        entry = known.entry if known is not None else self.directory.find(dimension_id)
        if entry is None:
            entry = self.directory.add(dimension_id)
        current = self.directory.generation(entry)
        if replaces is not None and current != replaces:
            # Checked under the lock, where the commit follows: nothing can publish in between.
            raise EditConflict(dimension_id=dimension_id, base_generation=replaces, current_generation=current)
        if generation is None:
            generation = current + 1
        elif generation <= current:
            raise GenerationNotNewer(dimension_id=dimension_id, generation=generation, current=current)
        name_bytes = name.encode("utf-8")
        own = index is None
        # The table's size follows the ids (dense ids: half the bytes); a table given is an
        # earlier generation's, of the same ids.
        slots = len(table) if table is not None else layer_index.slots_for_ids(rows["layer_id"])
        if index is None:
            index = alloc.allocate(layer_index.index_nbytes(len(name_bytes), len(rows), slots))
        try:
            view = self._inst.handle_view(index)
            table, built = layer_index.write_index(view, dimension_id=dimension_id, generation=generation,
                                                   name=name_bytes, rows=rows, table=table, slots=slots)
            slot_of = slot_of if built is None else built
            assert slot_of is not None  # given with the table it belongs to, or built with it
            nbytes = layer_index.index_nbytes(len(name_bytes), len(rows), len(table))
            view.release()
            for h in {h.record: h for h in (index, *new_blocks)}.values():
                tag = self._inst.control.tags[h.record]
                tag[:] = 0
                tag[RT.DIMENSION_ID], tag[RT.GENERATION], tag[RT.SERIAL] = dimension_id, generation, h.serial
        except BaseException:
            if own:
                alloc.free(index)
            raise
        pub = Published(dimension_id, name, generation, entry, index, source, len(rows), rows, row_blocks,
                        row_counts, {**blocks, index.record: index}, table, slot_of, region, file, compressed,
                        mapped)
        location = Location(generation, index.pool, index.first_block, nbytes, index.record, index.serial)
        return _Staged(location, pub, index if own else None, new_blocks)

    def _commit_locked(self, staged: list[_Staged]) -> list[int]:
        """Make staged generations visible at one instant (one W.PUBLISH_SEQ bracket around
        their directory stores and nothing else), then supersede what they replace and bump
        the epoch once."""
        with self.directory.commit():  # directory stores only: snapshot() waits on this bracket
            for i, st in enumerate(staged):
                self.directory.publish(st.pub.entry, st.location)
                if i == 0 and len(staged) > 1 and _faults.ARMED:
                    _faults.point("publish_many.half")
        olds = []
        for st in staged:
            pub = st.pub
            self._refs.update(pub.blocks.keys())
            old = self.current.get(pub.dimension_id)
            self.current[pub.dimension_id] = pub
            self.evicted.pop(pub.dimension_id, None)
            if old is not None:
                olds.append(old)
        for old in olds:  # after every new one is current: what they share is not "superseded"
            self._supersede(old)
        self._bump_epoch()
        for st in staged:
            pub = st.pub
            logger.info("published dimension {} ({!r}) generation {}: {} layers, {} new bytes from {}{}",
                        pub.dimension_id, pub.name, pub.generation, pub.layer_count,
                        sum(h.nbytes for h in {pub.handle.record: pub.handle,
                                               **{h.record: h for h in st.new_blocks}}.values()),
                        pub.source, "" if len(staged) == 1 else f" (one commit of {len(staged)})")
        return [st.pub.generation for st in staged]

    def evict(self, dimension_id: int, file: Path, *, generation: int, identity: tuple[int, ...] | None = None) -> int:
        """Publish "no region" as the dimension's next generation; its blocks are freed by the
        usual rule once no reader pins them. ``file`` must hold the bytes of ``generation``
        for a reload: EditConflict, evicting nothing, if that is no longer the current one (a
        publication came between the choice and the eviction; its bytes are not in ``file``)."""
        with self._lock:
            cur = self.current.get(dimension_id)
            if cur is None or cur.generation != generation:
                entry = self.directory.find(dimension_id)
                raise EditConflict(dimension_id=dimension_id, base_generation=generation,
                                   current_generation=None if entry is None else self.directory.generation(entry))
            del self.current[dimension_id]
            evicted_as = self.directory.generation(cur.entry) + 1
            self.directory.publish(cur.entry, Location.evicted_at(evicted_as))
            self._supersede(cur)
            self._bump_epoch()
            self.evicted[dimension_id] = Evicted(dimension_id, cur.name, cur.entry, evicted_as, file,
                                                 cur.layer_count, identity=identity)
        logger.info("evicted dimension {} ({!r}) as generation {}; {} bytes to be freed; reload from {}",
                    dimension_id, cur.name, evicted_as, cur.nbytes, file)
        return evicted_as

    def _supersede(self, old: Published) -> None:
        old.superseded_at = time.monotonic()
        old.superseded_epoch = int(self._inst.control.words[W.PIN_EPOCH]) + 1  # the bump that follows
        # Tagged superseded: its index, and the data allocations no current generation uses (what
        # releasing it can give back; shmpool.data.pins lists it as retained by the pins holding it).
        in_use = self._current_records()
        now_ns = time.time_ns()
        for h in (h for rec, h in old.blocks.items() if rec not in in_use):
            tag = self._inst.control.tags[h.record]
            if int(tag[RT.SUPERSEDED_NS]) == 0:
                tag[RT.SUPERSEDED_EPOCH] = old.superseded_epoch
                tag[RT.SUPERSEDED_NS] = now_ns
        self.superseded.append(old)

    def _current_records(self) -> set[int]:
        return {rec for pub in self.current.values() for rec in pub.blocks}

    def _bump_epoch(self) -> None:
        # Single writer (under self._lock), so the read-modify-write needs no shared lock.
        words = self._inst.control.words
        words[W.PIN_EPOCH] = int(words[W.PIN_EPOCH]) + 1
        self.wakeups.notify()  # every publication bumps the epoch: wake generation waiters here
        # And the reaper, which may sleep for a second when idle: what this supersedes is to be
        # reclaimed on its 20 ms rounds, and a generation wake-up lost here is re-sent by them.
        self.published_at = time.monotonic()
        if self.wake_reaper:
            self.wake_reaper = False
            self._inst.wake_coordinator()

    # ----------------------------------------------------------------- edits

    def hold_current(self, dimension_id: int) -> Published:
        """The current generation, kept from being released until :meth:`release_hold`: an edit
        started from it may read its layers. Raises DimensionNotFound if none is published."""
        with self._lock:
            pub = self.current.get(dimension_id)
            if pub is None:
                raise DimensionNotFound(dimension_id=dimension_id, available=list(self.current))
            self._holds[(dimension_id, pub.generation)] += 1
            return pub

    def release_hold(self, pub: Published) -> None:
        with self._lock:
            key = (pub.dimension_id, pub.generation)
            self._holds[key] -= 1
            if self._holds[key] <= 0:
                del self._holds[key]

    def stored_layer(self, pub: Published, row: int) -> memoryview:
        """The stored bytes of ``row`` of a held or current generation (a read-only view)."""
        r = pub.rows[row]
        seg = self._inst.pool_segment(int(r["pool"]))
        return memoryview(seg.mm)[int(r["start"]):int(r["end"])].toreadonly()

    def keyword_bytes(self, pub: Published, row: int) -> bytes:
        r = pub.rows[row]
        seg = self._inst.pool_segment(int(r["pool"]))
        return bytes(memoryview(seg.mm)[int(r["kw_start"]):int(r["kw_end"])])

    def key_bytes(self, pub: Published, row: int) -> bytes | None:
        """The UTF-8 text of the key of ``row``, or None if the layer was added by an int id."""
        r = pub.rows[row]
        if not int(r["flags"]) & FLAG_KEYED:
            return None
        seg = self._inst.pool_segment(int(r["pool"]))
        return bytes(memoryview(seg.mm)[int(r["key_start"]):int(r["key_end"])])

    def region_bytes(self, pub: Published) -> memoryview | bytes:
        """The generation as a region file's bytes: its own region allocation when it has one,
        else a region assembled from its rows (an edited generation shares its layers)."""
        if pub.region is not None:
            handle, at, nbytes = pub.region
            return self._inst.handle_view(handle)[at:at + nbytes].toreadonly()
        builder = RegionBuilder(pub.dimension_id, pub.name)
        for row, r in enumerate(pub.rows.tolist()):
            layer_id, flags, crc, freq = r[0], r[7], r[8], r[5]
            builder.add_stored(layer_id, bytes(self.stored_layer(pub, row)), text=bool(flags & FLAG_TEXT),
                               zstd=bool(flags & FLAG_ZSTD), crc=crc, frequency=freq,
                               keyword_bytes=self.keyword_bytes(pub, row), key=self.key_bytes(pub, row))
        return builder.to_bytes()

    # ----------------------------------------------------------------- reclamation

    def pending_free(self) -> int:
        """Bytes superseded generations will give back (pinned or in grace): their layer indexes
        and the data allocations no current generation uses."""
        with self._lock:
            sizes = self._inst.table.block_sizes
            in_use = self._current_records()
            pending: dict[int, Handle] = {}
            for old in self.superseded:
                pending.update((rec, h) for rec, h in old.blocks.items() if rec not in in_use)
            return sum(h.block_count * sizes[h.pool] for h in pending.values())

    def reclaim(self) -> int:
        """Release superseded generations no reader pins any more; returns how many were released."""
        if not self.superseded:
            return 0  # nothing waits on pins: skip the per-reader /proc checks of reap_dead
        self.registry.reap_dead()
        now = time.monotonic()
        freed = 0
        with self._lock:
            keep = []
            for old in self.superseded:
                assert old.superseded_at is not None  # set as it joined self.superseded
                age = now - old.superseded_at
                if age < GRACE or (old.dimension_id, old.generation) in self._holds:
                    keep.append(old)
                    continue
                holders = self.registry.holders(old.entry, old.generation)
                if holders:
                    keep.append(old)
                    if age > self.max_pin_age:
                        self._warn_stale(old, holders, age)
                    continue
                self._release(old)
                freed += 1
            self.superseded = keep
            if not keep:
                self._warned.clear()
        return freed

    def _release(self, old: Published) -> None:
        """Free the generation's index and every data allocation only it still used."""
        table = self._inst.table
        doomed = []
        for rec, h in old.blocks.items():
            self._refs[rec] -= 1
            if self._refs[rec] <= 0:
                del self._refs[rec]
                doomed.append(h)
        for h in doomed:
            try:
                table.free(h)
            except ShmPoolError as exc:
                logger.error("could not free an allocation of dimension {} generation {}: {}",
                             old.dimension_id, old.generation, exc)
        logger.debug("released dimension {} generation {}: {} allocations freed", old.dimension_id,
                     old.generation, len(doomed))

    def _warn_stale(self, old: Published, holders: list[tuple[int, int, bool]], age: float) -> None:
        """Once per (reader, generation): say who keeps a superseded region past max_pin_age.

        Never frees it: the reader lives, and may read it. Either it holds a context on purpose,
        or it stopped inside a lookup (its cache word still BUSY)."""
        sizes = self._inst.table.block_sizes
        in_use = self._current_records()
        nbytes = sum(h.block_count * sizes[h.pool] for rec, h in old.blocks.items() if rec not in in_use)
        for slot, pid, held in holders:
            key = (pid, slot, old.entry, old.generation)
            if key in self._warned:
                continue
            self._warned.add(key)
            why = ("it holds a context (or a view, batch or snapshot) of that generation" if held else
                   "it is inside a lookup of it and has not returned since (stopped, or descheduled?)")
            logger.warning("reader pid {} pins dimension {} generation {} for {:.1f} s (max_pin_age {:g} s): "
                           "{} bytes retained; {}; not freed while that process lives", pid, old.dimension_id, old.generation, age,
                           self.max_pin_age, nbytes, why)

    def snapshot(self) -> tuple[list[Published], list[Published]]:
        with self._lock:
            return list(self.current.values()), list(self.superseded)


def _merge(base: Published, new: np.ndarray, record: int, removed: list[int]
           ) -> tuple[np.ndarray, np.ndarray, dict[int, int], np.ndarray | None]:
    """The rows of ``base`` with ``removed`` ids gone and ``new`` rows (sorted, ``record``'s)
    added or replacing theirs: (rows, row_blocks, rows per record, table or None).

    Rows are handled as int64[n, 9] (ROW_DTYPE is 72 bytes of whole words): numpy copies
    structured arrays field by field, ~5x slower (a 2,000-row mask: 98 us against 19 us). An
    edit that keeps the id set (replacements only) keeps every row and slot where it was, so the
    base's table is copied and only the changed slots are rewritten: no rebuild, O(changes)
    bookkeeping beside the copies.
    """
    ids = base.rows["layer_id"]
    new_ids = new["layer_id"]
    pos = np.searchsorted(ids, new_ids)
    replaced = bool(len(ids)) and bool((ids[np.minimum(pos, len(ids) - 1)] == new_ids).all()) \
        and set(removed) <= set(new_ids.tolist())
    if replaced:
        rows, row_blocks, table = base.rows.copy(), base.row_blocks.copy(), base.table.copy()
        counts = dict(base.row_counts)
        for old in row_blocks[pos].tolist():
            counts[old] -= 1
            if not counts[old]:
                del counts[old]
        counts[record] = counts.get(record, 0) + len(pos)
        rows[pos] = new
        row_blocks[pos] = record
        slots = base.slot_of[pos]
        table[slots, 1], table[slots, 2], table[slots, 3] = new["start"], new["end"], layer_index.meta_column(rows)[pos]
        return rows, row_blocks, counts, table
    keep = ~np.isin(ids, np.concatenate([np.array(removed, dtype=np.int64), new_ids]))
    words = ROW_DTYPE.itemsize // 8
    kept = base.rows.view(np.int64).reshape(-1, words)[keep]
    at = np.searchsorted(ids[keep], new_ids)
    rows = np.insert(kept, at, new.view(np.int64).reshape(-1, words), axis=0).reshape(-1).view(ROW_DTYPE)
    row_blocks = np.insert(base.row_blocks[keep], at, record)
    recs, n = np.unique(row_blocks, return_counts=True)
    return rows, row_blocks, dict(zip(recs.tolist(), n.tolist())), None


def _rows_of_region(region: Region, pool: int, base: int) -> np.ndarray:
    """Index rows for a region placed at byte ``base`` of pool segment ``pool`` (vectorised)."""
    index = region.index
    rows = np.zeros(len(index), dtype=ROW_DTYPE)
    rows["layer_id"] = index["layer_id"]
    rows["start"] = base + index["offset"].astype(np.int64)
    rows["end"] = rows["start"] + index["length"].astype(np.int64)
    rows["kw_start"] = base + region.keywords_offset + index["kw_offset"].astype(np.int64)
    rows["kw_end"] = rows["kw_start"] + index["kw_length"].astype(np.int64)
    keyed = (index["flags"] & FLAG_KEYED) != 0
    rows["key_start"] = np.where(keyed, base + region.keywords_offset + index["key_offset"].astype(np.int64), 0)
    rows["key_end"] = np.where(keyed, rows["key_start"] + index["key_length"].astype(np.int64), 0)
    rows["frequency"] = index["frequency"]
    rows["pool"] = pool
    rows["flags"] = index["flags"]
    rows["crc32"] = index["crc32"]
    return rows
