"""Placing regions into shared memory, publishing them, and freeing what they supersede.

The coordinator is the directory's single writer; everything that changes which region a
dimension points at goes through :class:`Publisher`. Reclamation rule: a superseded region is
freed once (a) GRACE seconds have passed since it was superseded, and (b) no live reader pins
that very generation (pins are exact, shmpool/pins.py: a reader holding generation 1 does not
hold back 2, 3, ...). (a) covers the instant between a reader's pin store and its re-check of
the generation, during which the store may still sit in a CPU store buffer; it drains in
nanoseconds, so 10 ms is a wide margin. (b) is the real rule, and nothing overrides it while the
pinning process lives: a pin older than ``max_pin_age`` is logged and listed as stale, never
freed, because its reader may still read that memory. Only a dead reader's pins are dropped.

Each publication bumps W.PIN_EPOCH, which asks every reader to let go of the mappings it no
longer needs (shmpool/pin_watch.py); each region's record is tagged with its dimension and
generation (and when it was superseded) so that any process can list what a pin retains.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from loguru import logger

from shmpool.alloc import Handle
from shmpool.directory import Directory, Location
from shmpool import _faults
from shmpool.errors import InvalidArgument, RegionFormatError, ShmPoolError
from shmpool.gen_wait import GenerationNotifier
from shmpool.instance import SharedInstance
from shmpool.layout import RT, W
from shmpool.readers import ReaderRegistry
from shmpool.region import Region

__all__ = ["Published", "Evicted", "Placement", "Publisher", "GRACE", "MAX_PIN_AGE"]

GRACE = 0.010
MAX_PIN_AGE = 60.0  # seconds a live reader may block a superseded region before it is called stale


@dataclass
class Published:
    """One generation of one dimension placed in shared memory."""
    dimension_id: int
    name: str
    generation: int
    entry: int
    handle: Handle
    source: str
    layer_count: int
    file: Path | None = None      # a region file holding exactly these bytes (reload source)
    compressed: bool = False      # published by cold-layer compression
    published_at: float = field(default_factory=time.time)
    superseded_at: float | None = None   # time.monotonic()
    superseded_epoch: int = 0             # W.PIN_EPOCH after the publication that superseded it

    def as_dict(self) -> dict:
        h = self.handle
        return {
            "dimension_id": self.dimension_id, "name": self.name, "generation": self.generation,
            "source": self.source, "layer_count": self.layer_count, "nbytes": h.nbytes,
            "allocation": {"pool": h.pool, "first_block": h.first_block, "block_count": h.block_count,
                           "record": h.record},
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

    def as_dict(self) -> dict:
        return {"dimension_id": self.dimension_id, "name": self.name, "generation": self.generation,
                "file": str(self.file), "layer_count": self.layer_count, "evicted_at": self.evicted_at}


class Placement(NamedTuple):
    """One region for :meth:`Publisher.place_many`: the arguments :meth:`Publisher.place` takes."""
    nbytes: int
    write: Callable[[memoryview], None]
    source: str
    dimension_id: int                  # the region must hold this dimension
    built: tuple[int, str, int]        # (dimension id, name, layer count) from a RegionBuilder of ours


class Publisher:
    """Writes regions into pool blocks and publishes them as new generations. Thread-safe."""

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
        self._lock = threading.Lock()
        self.wakeups = GenerationNotifier(inst)  # posts reader.wait_generation callers

    def place(self, nbytes: int, write: Callable[[memoryview], None], *, source: str,
              expect_dimension: int | None = None, file: Path | None = None, compressed: bool = False,
              built: tuple[int, str, int] | None = None) -> int:
        """Allocate ``nbytes``, let ``write`` fill them with a region, check it, publish it.

        Returns the new generation. On any failure the blocks are freed before the error
        propagates: a half-placed dimension leaves nothing allocated. ``built`` = (dimension id,
        name, layer count) says ``write`` is a RegionBuilder of ours, whose output needs no
        re-parsing; bytes copied from elsewhere (a file that might change under us) are checked.
        """
        table = self._inst.table
        handle = table.allocate(nbytes)
        try:
            view = self._inst.handle_view(handle)
            write(view)
            if built is not None:
                dimension_id, name, layers = built
            else:
                # Structure only: content checksums were verified where the bytes came from.
                region = Region.from_buffer(view, source=source, verify_checksums=False)
                dimension_id, name, layers = region.dimension_id, region.name, region.layer_count
                del region
            view.release()
            if expect_dimension is not None and dimension_id != expect_dimension:
                raise RegionFormatError(source=source, fault=f"holds dimension {dimension_id}, "
                                                             f"expected {expect_dimension}")
        except BaseException:
            table.free(handle)
            raise
        with self._lock:
            entry = self.directory.entry_for(dimension_id)
            if entry is None:
                try:
                    entry = self.directory.add(dimension_id)
                except BaseException:
                    table.free(handle)
                    raise
            generation = self.directory.generation(entry) + 1
            tag = self._inst.control.tags[handle.record]
            tag[:] = 0
            tag[RT.DIMENSION_ID], tag[RT.GENERATION], tag[RT.SERIAL] = dimension_id, generation, handle.serial
            self.directory.publish(entry, Location(generation, handle.pool, handle.first_block, nbytes,
                                                   handle.record, handle.serial))
            old = self.current.get(dimension_id)
            self.current[dimension_id] = Published(dimension_id, name, generation, entry, handle,
                                                   source, layers, file, compressed)
            self.evicted.pop(dimension_id, None)
            if old is not None:
                self._supersede(old)
            self._bump_epoch()
        logger.info("published dimension {} ({!r}) generation {}: {} layers, {} bytes from {}",
                    dimension_id, name, generation, layers, nbytes, source)
        return generation

    def place_many(self, placements: Sequence[Placement]) -> list[int]:
        """Place every region, then publish them all as one commit; returns their generations.

        All or nothing: every region is allocated, written and checked before the first
        directory store, and any failure frees what was placed and publishes nothing. Readers
        see the GENERATION words change inside one W.PUBLISH_SEQ bracket (Directory.commit), so
        a snapshot or a batch sees all of them or none."""
        ids = [p.dimension_id for p in placements]
        if len(set(ids)) != len(ids):
            raise InvalidArgument(argument="dimension_ids", value=ids, reason="a dimension appears twice")
        table = self._inst.table
        handles = []
        committing = False
        try:
            for p in placements:
                handles.append(table.allocate(p.nbytes))
                view = self._inst.handle_view(handles[-1])
                try:
                    p.write(view)
                finally:
                    view.release()
                if p.built[0] != p.dimension_id:
                    raise RegionFormatError(source=p.source, fault=f"holds dimension {p.built[0]}, "
                                                                   f"expected {p.dimension_id}")
            with self._lock:
                # Entries first: DirectoryFull must come before anything is visible. An entry
                # claimed here and left unpublished reads as "not published" and is reused.
                entries = [self.directory.entry_for(d) for d in ids]
                entries = [e if e is not None else self.directory.add(d) for e, d in zip(entries, ids)]
                gens = [self.directory.generation(e) + 1 for e in entries]
                tags = self._inst.control.tags
                for h, d, g in zip(handles, ids, gens):
                    tags[h.record] = 0
                    tags[h.record, RT.DIMENSION_ID], tags[h.record, RT.GENERATION] = d, g
                    tags[h.record, RT.SERIAL] = h.serial
                committing = True  # from here on the regions may be visible: never free them
                with self.directory.commit():  # directory stores only: readers wait on this bracket
                    for i, (p, h, e, g) in enumerate(zip(placements, handles, entries, gens)):
                        self.directory.publish(e, Location(g, h.pool, h.first_block, p.nbytes, h.record, h.serial))
                        if i == 0 and _faults.ARMED:
                            _faults.point("publish_many.half")
                for p, h, e, g in zip(placements, handles, entries, gens):
                    old = self.current.get(p.dimension_id)
                    self.current[p.dimension_id] = Published(p.dimension_id, p.built[1], g, e, h, p.source,
                                                             p.built[2])
                    self.evicted.pop(p.dimension_id, None)
                    if old is not None:
                        self._supersede(old)
                self._bump_epoch()
        except BaseException:
            if not committing:
                for h in handles:
                    table.free(h)
            raise
        logger.info("published dimensions {} as one commit: generations {}, {} bytes",
                    ids, gens, sum(p.nbytes for p in placements))
        return gens

    def evict(self, dimension_id: int, file: Path) -> int:
        """Publish "no region" as the dimension's next generation; its blocks are freed by the
        usual rule once no reader pins them. ``file`` must hold the bytes for a reload."""
        with self._lock:
            cur = self.current.pop(dimension_id)
            generation = self.directory.generation(cur.entry) + 1
            self.directory.publish(cur.entry, Location.evicted_at(generation))
            self._supersede(cur)
            self._bump_epoch()
            self.evicted[dimension_id] = Evicted(dimension_id, cur.name, cur.entry, generation, file,
                                                 cur.layer_count)
        logger.info("evicted dimension {} ({!r}) as generation {}; {} bytes to be freed; reload from {}",
                    dimension_id, cur.name, generation, cur.handle.nbytes, file)
        return generation

    def _supersede(self, old: Published) -> None:
        old.superseded_at = time.monotonic()
        old.superseded_epoch = int(self._inst.control.words[W.PIN_EPOCH]) + 1  # the bump that follows
        tag = self._inst.control.tags[old.handle.record]
        tag[RT.SUPERSEDED_EPOCH] = old.superseded_epoch
        tag[RT.SUPERSEDED_NS] = time.time_ns()
        self.superseded.append(old)

    def _bump_epoch(self) -> None:
        # Single writer (under self._lock), so the read-modify-write needs no shared lock.
        words = self._inst.control.words
        words[W.PIN_EPOCH] = int(words[W.PIN_EPOCH]) + 1
        self.wakeups.notify()  # every publication bumps the epoch: wake generation waiters here

    def pending_free(self) -> int:
        """Bytes held by superseded generations that are not freed yet (pinned or in grace)."""
        with self._lock:
            sizes = self._inst.table.block_sizes
            return sum(old.handle.block_count * sizes[old.handle.pool] for old in self.superseded)

    def reclaim(self) -> int:
        """Free superseded regions no reader pins any more; returns how many were freed."""
        if not self.superseded:
            return 0  # nothing waits on pins: skip the per-reader /proc checks of reap_dead
        self.registry.reap_dead()
        now = time.monotonic()
        freed = 0
        with self._lock:
            keep = []
            for old in self.superseded:
                if now - old.superseded_at < GRACE:
                    keep.append(old)
                    continue
                holders = self.registry.holders(old.entry, old.generation)
                if holders:
                    keep.append(old)
                    if now - old.superseded_at > self.max_pin_age:
                        self._warn_stale(old, holders, now)
                    continue
                try:
                    self._inst.table.free(old.handle)
                    freed += 1
                    logger.debug("freed dimension {} generation {}", old.dimension_id, old.generation)
                except ShmPoolError as exc:
                    logger.error("could not free dimension {} generation {}: {}",
                                 old.dimension_id, old.generation, exc)
            self.superseded = keep
            if not keep:
                self._warned.clear()
        return freed

    def _warn_stale(self, old: Published, holders: list[tuple[int, int, int]], now: float) -> None:
        """Once per (reader, generation): say who keeps a superseded region past max_pin_age.

        Never frees it: the reader lives, and may read it. Either it holds a context on purpose
        (it answered the last drop request) or it has not run since (stopped, stuck in C code)."""
        sizes = self._inst.table.block_sizes
        nbytes = old.handle.block_count * sizes[old.handle.pool]
        for slot, pid, seen in holders:
            key = (pid, slot, old.entry, old.generation)
            if key in self._warned:
                continue
            self._warned.add(key)
            why = ("it answered the drop request, so it holds a context of that generation"
                   if seen >= old.superseded_epoch else
                   "it has not answered the drop request since (stopped, or busy without the GIL?)")
            logger.warning("reader pid {} pins dimension {} generation {} for {:.1f} s (max_pin_age {:g} s): "
                           "{} bytes retained; {}; not freed while that process lives",
                           pid, old.dimension_id, old.generation, now - old.superseded_at,
                           self.max_pin_age, nbytes, why)

    def snapshot(self) -> tuple[list[Published], list[Published]]:
        with self._lock:
            return list(self.current.values()), list(self.superseded)
