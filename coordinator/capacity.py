"""Capacity management in the coordinator: access recency, LRU eviction, reloads, cold compression.

All of it runs in the coordinator's reaper thread, so nothing here is on a reader's path. Readers
only mark a dimension's TOUCHED word (0 -> 1 on a lookup, 2 when they need an evicted dimension
back); every ``sample_interval`` this module turns the marks into last-access times and resets them.

Eviction rule: when usage passes the eviction threshold (85% of the limit), evict the dimensions
least recently used until usage *minus what superseded generations will give back* is at or under
``low_water`` (70% by default, under the 75% warning, so a full cycle ends quiet). A dimension is
only evicted if it can come back byte for byte: its region file still holds exactly its bytes, or
its region is first written out to the spill directory (crystallized dimensions have no file).

Spill files are named ``NAME.dim-DDDDD-genG.region`` after the instance, and are removed when
the coordinator of NAME starts (what a crashed run left) and when it stops: nothing can reload
them once their instance is gone. Only files of that pattern go (and write_atomically's
``.NAME.dim-....tmp`` temporaries), so a spill folder shared with other instances or holding
the user's own files loses nothing else.

Cold compression (``compress_cold``): a dimension not read for ``cold_after`` seconds is
republished with its layers zstd-compressed where that saves >= 10%; once read in
``rehydrate_after`` separate sampling periods it is republished uncompressed.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shmpool.substrate._log import logger

from shmpool.data import compression
from shmpool.errors import EditConflict, InvalidArgument, ShmPoolError
from shmpool.substrate.instance import SharedInstance
from shmpool.substrate.layout import D, TOUCHED_NONE, TOUCHED_RELOAD, W
from shmpool.substrate.limits import PER_MILLE, Budget, per_mille
from shmpool.data.region import Region
from shmpool.data.region_builder import RegionBuilder, write_atomically

from .loading import file_identity, place_file
from .publisher import Published, Publisher

__all__ = ["CapacityPolicy", "CapacityManager"]


@dataclass(frozen=True)
class CapacityPolicy:
    """How the coordinator keeps within its memory limit."""
    evict: bool = True               # evict cold dimensions above the eviction threshold
    low_water: int = 700             # per mille of the limit at which eviction stops
    spill_dir: Path | None = None    # where crystallized dimensions are written before eviction
    compress_cold: bool = False      # store dimensions that went cold zstd-compressed
    cold_after: float = 30.0         # seconds without a read before a dimension counts as cold
    rehydrate_after: int = 3         # sampling periods with reads before a compressed one is expanded
    sample_interval: float = 0.1     # seconds between turns of TOUCHED marks into access times
    pool_growth: int = 2             # growth segments per configured pool (see SharedInstance.create)
    huge_pages: bool = False         # madvise(MADV_HUGEPAGE) on pool segments

    def __post_init__(self) -> None:
        if not 0 < self.low_water < PER_MILLE:
            raise InvalidArgument(argument="low_water", value=self.low_water,
                                  reason=f"per mille of the limit, 0 < low_water < {PER_MILLE}")
        if self.compress_cold and not compression.available():
            raise InvalidArgument(argument="compress_cold", value=True,
                                  reason="needs the zstandard package: pip install 'shmpool[compress]'")
        if self.cold_after <= 0 or self.sample_interval <= 0 or self.rehydrate_after < 1:
            raise InvalidArgument(argument="(cold_after, sample_interval, rehydrate_after)",
                                  value=(self.cold_after, self.sample_interval, self.rehydrate_after),
                                  reason="cold_after and sample_interval must be positive, rehydrate_after >= 1")


@dataclass
class CapacityCounters:
    evictions: int = 0
    reloads: int = 0
    reload_failures: int = 0
    spills_written: int = 0
    compressions: int = 0
    rehydrations: int = 0
    last_reload_ms: float = 0.0
    evicted_bytes: int = 0
    compression_saved_bytes: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)  # the last few, for dump_state

    def note(self, kind: str, **info: Any) -> None:
        self.events.append({"event": kind, "at": time.time(), **info})
        del self.events[:-50]


class CapacityManager:
    """Owned by a Coordinator; ``tick()`` is called from its reaper thread."""

    def __init__(self, inst: SharedInstance, publisher: Publisher, policy: CapacityPolicy, spill_dir: Path) -> None:
        self._inst = inst
        self._publisher = publisher
        self.policy = policy
        self.spill_dir = spill_dir
        self.counters = CapacityCounters()
        self.last_access: dict[int, float] = {}       # dimension id -> monotonic time of last read seen
        self._hot_periods: dict[int, int] = {}        # compressed dimension id -> periods read since
        self._incompressible: set[tuple[int, int]] = set()  # (dimension, generation) not worth it
        self._last_sample = 0.0

    # ----------------------------------------------------------------- the reaper's entry point

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._serve_reload_requests()
        if now - self._last_sample >= self.policy.sample_interval:
            self._last_sample = now
            self._sample(now)
            if self.policy.compress_cold:
                self._compress_or_expand(now)
        if self.policy.evict:
            self.evict_if_needed()

    # ----------------------------------------------------------------- recency

    def _sample(self, now: float) -> None:
        directory = self._inst.control.directory
        touched = directory[:, D.TOUCHED]
        for pub in self._publisher.snapshot()[0]:
            mark = int(touched[pub.entry])
            self.last_access.setdefault(pub.dimension_id, now - 0.0)
            if mark == TOUCHED_NONE:
                continue
            if mark != TOUCHED_RELOAD:  # a reload request is cleared by the reload, not here
                touched[pub.entry] = TOUCHED_NONE
            self.last_access[pub.dimension_id] = now
            if pub.compressed:
                self._hot_periods[pub.dimension_id] = self._hot_periods.get(pub.dimension_id, 0) + 1

    def coldest(self) -> list[Published]:
        """Current dimensions, least recently read first."""
        current = self._publisher.snapshot()[0]
        return sorted(current, key=lambda p: (self.last_access.get(p.dimension_id, 0.0), p.dimension_id))

    # ----------------------------------------------------------------- eviction

    def evict_if_needed(self) -> int:
        budget = Budget.read(self._inst.control.words)
        if not budget.over_evict:
            return 0
        return self.make_room(per_mille(budget.limit, self.policy.low_water))

    def make_room(self, target_used: int) -> int:
        """Evict coldest-first until usage net of pending frees is at most ``target_used``."""
        evicted = 0
        words = self._inst.control.words
        for pub in self.coldest():
            if pub.mapped:
                continue  # its layers are a mapped file: evicting it would free only its index
            projected = int(words[W.USED_BYTES]) - self._publisher.pending_free()
            if projected <= target_used:
                break
            try:
                self.evict(pub)
                evicted += 1
            except EditConflict:
                # Published again since coldest() (the program, from another thread): its new
                # generation is judged on the next round, as anything recently published.
                logger.debug("dimension {} was republished while being evicted: kept", pub.dimension_id)
            except (OSError, ShmPoolError) as exc:
                logger.error("cannot evict dimension {}: {}", pub.dimension_id, exc)
        if evicted:
            self._publisher.reclaim()  # unpinned ones go at once; pinned ones when readers move on
        return evicted

    def evict(self, pub: Published) -> None:
        """Evict generation ``pub`` (EditConflict, evicting nothing, if it is no longer current)."""
        identity = self._file_matches(pub)
        spilled = identity is None
        file = self._spill(pub) if spilled else pub.file
        assert file is not None
        if identity is None:
            identity = file_identity(os.stat(file))
        try:
            # The generation must still be the one just written out: a publication that came
            # while it was (the program's, from its own thread) is not in that file.
            self._publisher.evict(pub.dimension_id, file, generation=pub.generation, identity=identity)
        except EditConflict:
            evicted = self._publisher.evicted.get(pub.dimension_id)
            # Unless another thread's eviction of the same generation (make_room from a
            # crystallize beside the reaper's) wrote the same spill file and published it.
            if spilled and (evicted is None or evicted.file != file):
                file.unlink(missing_ok=True)
            raise
        self.counters.evictions += 1
        self.counters.evicted_bytes += pub.data_nbytes
        self.counters.note("evict", dimension_id=pub.dimension_id, generation=pub.generation,
                           nbytes=pub.data_nbytes, file=str(file))

    def _file_matches(self, pub: Published) -> tuple[int, ...] | None:
        """The file's identity (loading.file_identity) if it still holds exactly the bytes in
        shared memory (size, then a full compare, unchanged meanwhile), else None. A reload
        checks the identity again: a file replaced or rewritten after the eviction no longer
        holds them (it used to be served all the same, as a newer generation)."""
        if pub.file is None or pub.region is None:
            return None
        try:
            with open(pub.file, "rb") as f:
                before = file_identity(os.fstat(f.fileno()))
                if before[2] != pub.data_nbytes:
                    return None
                same = f.read() == self._publisher.region_bytes(pub)
                return before if same and file_identity(os.fstat(f.fileno())) == before else None
        except OSError:
            return None

    def _spill(self, pub: Published) -> Path:
        """Write the region exactly as it lies in shared memory (it *is* a region file), atomically."""
        self.spill_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.spill_dir / f"{self._inst.name}.dim-{pub.dimension_id:05d}-gen{pub.generation}.region"
        if path.is_file():
            # Written by this run (a start removes what earlier ones left), complete (atomic),
            # and a generation's bytes never change: another eviction of it wrote it, maybe one
            # that won and reloads from it with its identity (so it is not written again).
            return path
        write_atomically(path, [self._publisher.region_bytes(pub)], mode=0o600)
        self.counters.spills_written += 1
        logger.info("dimension {} generation {} written to {} before eviction", pub.dimension_id,
                    pub.generation, path)
        return path

    def remove_spills(self) -> list[Path]:
        """Delete this instance's spill files (and temporaries); returns what was removed.

        Called at start, under the instance's lock file, so no live coordinator of this name
        can still need them, and at stop. Files of other names are left alone.
        """
        spill = rf"{re.escape(self._inst.name)}\.dim-\d+-gen\d+\.region"
        ours = re.compile(rf"^(?:{spill}|\.{spill}\.\w+\.tmp)$")  # tmp: write_atomically's mkstemp
        try:
            entries = list(os.scandir(self.spill_dir))
        except FileNotFoundError:
            return []
        except OSError as exc:
            logger.warning("cannot list spill folder {}: {}", self.spill_dir, exc)
            return []
        removed = []
        for entry in entries:
            if not ours.match(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:
                logger.debug("spill file {} vanished before removal", entry.path)
            except OSError as exc:
                logger.warning("cannot remove spill file {}: {}", entry.path, exc)
        if removed:
            logger.info("removed {} spill file(s) of instance {!r} from {}", len(removed), self._inst.name,
                        self.spill_dir)
        return removed

    # ----------------------------------------------------------------- reload

    def reload_pending(self) -> bool:
        """Whether a reader still asks for an evicted dimension (a reload that failed is retried
        every reaper round: the coordinator keeps its short rounds while this holds)."""
        if not self._publisher.evicted:
            return False
        touched = self._inst.control.directory[:, D.TOUCHED]
        return any(int(touched[ev.entry]) == TOUCHED_RELOAD for ev in list(self._publisher.evicted.values()))

    def _serve_reload_requests(self) -> None:
        if not self._publisher.evicted:
            return
        touched = self._inst.control.directory[:, D.TOUCHED]
        for dim, ev in list(self._publisher.evicted.items()):
            if int(touched[ev.entry]) != TOUCHED_RELOAD:
                continue
            self.reload(dim)

    def reload(self, dimension_id: int, *, strict: bool = False) -> int | None:
        """Place an evicted dimension back from its file; returns the new generation, or None
        if it is not evicted (any more) or the reload failed: logged, counted, retried on the
        next request; with ``strict`` the failure's typed error is raised instead (a caller
        that cannot go on without the dimension: ``Coordinator.edit_dimension``)."""
        ev = self._publisher.evicted.get(dimension_id)
        if ev is None:
            return None
        t0 = time.perf_counter()
        try:
            try:
                room = os.stat(ev.file).st_size
            except OSError:
                room = 0  # place_file says what is wrong with it
            budget = Budget.read(self._inst.control.words)
            if room and budget.refuses(room):
                self.make_room(budget.refuse_at - room)
            # Copied and checked on the copy, never mapped: a file truncated meanwhile is a
            # RegionFormatError, not a SIGBUS (coordinator/loading.py, place_file).
            generation = place_file(self._publisher, self._inst, ev.file, expect_dimension=dimension_id,
                                    replaces=ev.generation, identity=ev.identity)
        except EditConflict:
            # The program published the dimension while its file was being copied back (or
            # another reload came first): that generation stands, the copy is out of date.
            logger.info("dimension {} was published while being reloaded from {}: the reload is dropped",
                        dimension_id, ev.file)
            if dimension_id not in self._publisher.evicted:
                self._inst.control.directory[ev.entry, D.TOUCHED] = TOUCHED_NONE
            return None
        except ShmPoolError as exc:
            self.counters.reload_failures += 1
            logger.error("cannot reload dimension {} from {}: {}", dimension_id, ev.file, exc)
            if strict:
                raise
            return None
        self._inst.control.directory[ev.entry, D.TOUCHED] = TOUCHED_NONE
        self.last_access[dimension_id] = time.monotonic()
        ms = (time.perf_counter() - t0) * 1e3
        self.counters.reloads += 1
        self.counters.last_reload_ms = ms
        self.counters.note("reload", dimension_id=dimension_id, generation=generation, ms=round(ms, 3))
        logger.info("reloaded dimension {} from {} as generation {} in {:.1f} ms", dimension_id, ev.file,
                    generation, ms)
        return generation

    # ----------------------------------------------------------------- cold compression

    def _compress_or_expand(self, now: float) -> None:
        """At most one republication per call: each is a full pass over a dimension's bytes."""
        for pub in self.coldest():
            if pub.compressed:
                if self._hot_periods.get(pub.dimension_id, 0) >= self.policy.rehydrate_after:
                    self._republish(pub, compress=False)
                    return
            elif pub.mapped:
                continue  # in a mapped file, not in shared memory: compressing it would add, not save
            elif (now - self.last_access.get(pub.dimension_id, now) >= self.policy.cold_after
                  and (pub.dimension_id, pub.generation) not in self._incompressible):
                self._republish(pub, compress=True)
                return

    def _republish(self, pub: Published, *, compress: bool) -> None:
        region = Region.from_buffer(self._publisher.region_bytes(pub), source=pub.source, verify_checksums=False)
        try:
            builder = RegionBuilder(pub.dimension_id, region.name)
            for row, lid in enumerate(region.layer_ids()):
                key = region.key(row)  # a keyed layer keeps its key text (and so its id)
                builder.add_layer(lid if key is None else key, region.content(lid), frequency=region.frequency(row),
                                  keywords=region.keywords(row), text=region.is_text(row), compress=compress)
        finally:
            region.close()
        nbytes = builder.nbytes()
        if compress and nbytes > pub.data_nbytes * (1 - compression.MIN_SAVING):
            self._incompressible.add((pub.dimension_id, pub.generation))
            return
        try:
            # Made from generation ``pub``: refused if the program published the dimension
            # meanwhile, else its publication would be replaced by this copy of the one before.
            generation = self._publisher.place(nbytes, builder.write_into, layer_count=len(builder),
                                               name=builder.name, source=pub.source, expect_dimension=pub.dimension_id,
                                               file=None, compressed=compress, replaces=pub.generation)
        except EditConflict:
            logger.debug("dimension {} was republished while being {}: left as published", pub.dimension_id,
                         "compressed" if compress else "expanded")
            return
        self._hot_periods.pop(pub.dimension_id, None)
        if compress:
            self.counters.compressions += 1
            self.counters.compression_saved_bytes += pub.data_nbytes - nbytes
        else:
            self.counters.rehydrations += 1
        self.counters.note("compress" if compress else "expand", dimension_id=pub.dimension_id,
                           generation=generation, before=pub.data_nbytes, after=nbytes)
        logger.info("dimension {} republished {} as generation {}: {} -> {} bytes", pub.dimension_id,
                    "zstd-compressed" if compress else "uncompressed", generation, pub.data_nbytes, nbytes)

    # ----------------------------------------------------------------- reporting

    def stats(self) -> dict[str, Any]:
        c = self.counters
        words = self._inst.control.words
        budget = Budget.read(words)
        current = self._publisher.snapshot()[0]
        return {
            "state": budget.state.label, "evictions": c.evictions, "reloads": c.reloads, "reload_failures": c.reload_failures,
            "spills_written": c.spills_written, "compressions": c.compressions, "rehydrations": c.rehydrations,
            "evicted_bytes": c.evicted_bytes, "compression_saved_bytes": c.compression_saved_bytes,
            "last_reload_ms": c.last_reload_ms, "pool_growths": int(words[W.POOL_GROWTHS]),
            "evicted_dimensions": sorted(self._publisher.evicted),
            "compressed_dimensions": sorted(p.dimension_id for p in current if p.compressed),
            "pending_free_bytes": self._publisher.pending_free(),
            "low_water_bytes": per_mille(budget.limit, self.policy.low_water),
        }

    def dump(self) -> dict[str, Any]:
        return {"policy": {k: (str(v) if isinstance(v, Path) else v) for k, v in self.policy.__dict__.items()},
                "spill_dir": str(self.spill_dir), "stats": self.stats(),
                "evicted": [e.as_dict() for e in self._publisher.evicted.values()],
                "recent_events": list(self.counters.events)}
