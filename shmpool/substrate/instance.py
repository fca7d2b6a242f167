"""An instance's shared objects as one owner object: control segment, pool segments, lock.

``SharedInstance.create`` is for the coordinator (it owns the names and unlinks them at stop);
``SharedInstance.attach`` is for every other process (it only maps and unmaps). The control
segment is created last and its magic written last, so a process that can attach sees a
complete instance. Its pages are reserved whole at creation (every process writes into it);
pool pages are reserved per allocation by the table, so a full /dev/shm is never a SIGBUS.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import posix_ipc
from ._log import logger

from ._proc import is_alive, my_identity
from .alloc import AllocationTable, Handle
from ..errors import AttachError, InstanceExists, InvalidArgument, OutOfBounds, ShmPoolError
from .layout import (FILE_COLS, FILE_SET, HEADER, LAYOUT_VERSION, MAGIC, POOL_COLS, STATE_RUNNING, STATE_STOPPING,
                     Control, F, Layout, P, W, pack_header)
from .mapped_files import SUFFIX, MappedFile, digest_words, map_fd, map_file, store_dir, words_digest
from .limits import DEFAULT_LIMIT, Thresholds
from .lock import shared_lock
from .names import (cleanup, foreign_objects, instance_names, newest_change, raise_if_foreign,
                    segment_name, semaphore_name, validate_name)
from .platform import check_system, full_error, is_full
from .removal import flock_holder
from .segments import Segment, close_mapping
from .trust import SHM_DIR, open_semaphore, shm_path, verify_path

__all__ = ["PoolSpec", "DEFAULT_POOLS", "SharedInstance", "sweep_dead", "coordinator_pid"]


@dataclass(frozen=True)
class PoolSpec:
    """A pool of ``block_count`` blocks of ``block_size`` bytes (one segment)."""
    block_size: int
    block_count: int

    def __post_init__(self) -> None:
        bs = self.block_size
        if bs < 64 or bs & (bs - 1):
            raise InvalidArgument(argument="block_size", value=bs, reason="a pool's block size must be a power of two >= 64")
        if self.block_count <= 0:
            raise InvalidArgument(argument="block_count", value=self.block_count,
                                  reason="a pool's block count must be positive")

    @property
    def nbytes(self) -> int:
        return self.block_size * self.block_count


# Segments are sparse on tmpfs, so capacity that is never touched costs nothing; the memory
# limit, not the pool sizes, bounds real usage. Block counts are kept modest because allocation
# scans a pool's bitmap (16384 bits unpack and scan in ~20 µs here).
DEFAULT_POOLS: tuple[PoolSpec, ...] = (
    PoolSpec(4 * 1024, 16 * 1024),      # 64 MiB of 4 KiB blocks
    PoolSpec(64 * 1024, 2 * 1024),      # 128 MiB of 64 KiB blocks
    PoolSpec(1024 * 1024, 280),         # 280 MiB of 1 MiB blocks
)

DEFAULT_GROWTH = 2  # growth segments each configured pool may add

WAKE_SEM = "wake"  # readers post it to wake the coordinator's reaper (a reload request)
CONTROL = "control"
_I64 = struct.Struct("<q")  # one control word, read without a numpy view (a reader makes none of pools/files)
_FILE_ROW = struct.Struct(f"<{FILE_COLS}q")


def _close_all(segments: list[Segment | mmap.mmap], sems: list[posix_ipc.Semaphore],
               exports: list[memoryview | None]) -> None:
    exports.clear()  # dropped, never released: Generations may still hold them (then the unmap waits)
    for seg in segments:
        if isinstance(seg, Segment):
            seg.close()
        else:
            close_mapping(seg, "a served region file")
    for sem in sems:
        try:
            sem.close()
        except posix_ipc.ExistentialError:
            logger.debug("semaphore {} already closed", sem.name)


class SharedInstance:
    """The shared objects of instance ``name`` mapped into this process."""

    # Slots, no __dict__: every reader process has one (~200 B less of its private memory,
    # docs/performance.md issue 22).
    __slots__ = ("name", "owner", "control_segment", "control", "pool_segments", "instance_token", "lock",
                 "_thresholds", "_table", "_pool_views", "_exports", "_files", "_store", "_closed", "_present", "huge_pages",
                 "_mapped", "_wake", "_mapped_sems", "_finalizer", "__weakref__")

    def __init__(self, name: str, control_seg: Segment, control: Control, pools: list[Segment | None],
                 *, owner: bool, thresholds: Thresholds | None) -> None:
        self.name = name
        self.owner = owner
        self.control_segment = control_seg
        self.control = control
        self.pool_segments = pools  # None for growth rows not created or not yet mapped here
        self.instance_token = HEADER.unpack_from(control_seg.mm, 0)[4]
        # The table's robust mutex, in the control words (made by _initialise before the magic).
        self.lock = shared_lock(control_seg.mm, control.layout.words_offset, name=name, role="table")
        # The allocation table is made on first use: a reader never allocates (its ~2.3 kB of
        # lists and views per process were a reader's for nothing, docs/performance.md issue 22).
        # A process that takes the lock from a dead holder repairs the table all the same.
        self._thresholds = thresholds
        self._table: AllocationTable | None = None
        self.lock.on_recover = self._recover_table
        # Writable views for view(), made on a pool's first use: a reader never asks (its ~1 kB).
        self._pool_views: list[memoryview | None] = [None] * len(pools)
        # File rows mapped here, by row (pool number - pool_count): the mmap objects alone, in a
        # list as long as the last row mapped (a dict and an object per file with its path were
        # ~0.17 kB per file of a reader's private memory, docs/performance.md issue 22).
        self._files: list[mmap.mmap | None] = []
        self._store: str | None = None  # their folder, resolved (and checked) at the first
        self._closed = False
        self._present: list[int] | None = None
        self.huge_pages = False  # set by create(); growth segments this process creates follow it
        # The finalizer closes what this list holds when it runs: growth segments mapped later
        # are appended to it.
        self._mapped: list[Segment | mmap.mmap] = [control_seg, *(seg for seg in pools if seg is not None)]
        self._wake: posix_ipc.Semaphore | None = None
        self._mapped_sems: list[posix_ipc.Semaphore] = []  # the wake semaphore, once opened
        # Read-only views of whole pool mappings, one per pool a layer index lies in (pool_export).
        self._exports: list[memoryview | None] = []
        self._finalizer = weakref.finalize(self, _close_all, self._mapped, self._mapped_sems, self._exports)

    @property
    def table(self) -> AllocationTable:
        """The allocation table over the control segment (made on first use)."""
        table = self._table
        if table is None:
            thresholds = self._thresholds
            if thresholds is None:  # attached: read when first needed (a reader never allocates)
                words = self.control.words_mv
                thresholds = Thresholds(words[W.WARN_PERMILLE], words[W.EVICT_PERMILLE], words[W.REFUSE_PERMILLE])
            table = self._table = AllocationTable(self.control, self.lock, instance_token=self.instance_token,
                                                  thresholds=thresholds, grow=self._create_growth_segment,
                                                  back=self._back_pages)
        return table

    def _recover_table(self, dead_pid: int) -> None:
        """The lock's recovery hook until the table exists (making it installs its own)."""
        self.table._after_takeover(dead_pid)

    def block_size(self, pool: int) -> int:
        """Block size of pool number ``pool`` (a pool row of the control segment)."""
        return self._pool_word(pool, P.BLOCK_SIZE)

    def _pool_word(self, pool: int, col: int) -> int:
        """One word of a pool row, read from the mapping: a reader's lookups need two of them,
        not a numpy view of the section (~430 B of its private memory, docs/performance.md issue 22)."""
        if not 0 <= pool < self.control.layout.pool_count:
            raise IndexError(f"pool {pool} of {self.control.layout.pool_count}")
        at = self.control.layout.pools_offset + (pool * POOL_COLS + col) * 8
        return int(_I64.unpack_from(self.control_segment.mm, at)[0])

    # ----------------------------------------------------------------- creation / attach

    @classmethod
    def create(cls, name: str, *, pools: Sequence[PoolSpec] = DEFAULT_POOLS,
               memory_limit: int = DEFAULT_LIMIT, thresholds: Thresholds = Thresholds(),
               max_records: int = 4096, max_dimensions: int = 256, max_readers: int = 512,
               replace_stale: bool = True, growth: int = DEFAULT_GROWTH,
               huge_pages: bool = False) -> "SharedInstance":
        """Create every shared object of instance ``name``; the caller owns (and later unlinks) them.

        Leftovers of a crashed instance of the same name are removed first when ``replace_stale``;
        a live one raises InstanceExists. Each configured pool may grow by ``growth`` more
        segments of its own size when it is full but the memory limit allows (rows reserved now,
        segments created on demand by whichever process needs the room). Raises
        SharedMemoryFull, leaving nothing behind, when /dev/shm cannot hold the control segment.
        """
        validate_name(name)
        check_system(name)  # a platform we cannot serve says so now, not with a hang later
        if not pools:
            raise InvalidArgument(argument="pools", value=tuple(pools), reason="at least one pool is needed")
        if memory_limit <= 0:
            raise InvalidArgument(argument="memory_limit", value=memory_limit, reason="the memory limit must be positive")
        if growth < 0:
            raise InvalidArgument(argument="growth", value=growth, reason="growth segments per pool must be >= 0")
        cls._clear_stale(name, replace_stale)
        rows = list(pools) + [spec for spec in pools for _ in range(growth)]
        layout = Layout.compute([p.block_count for p in rows], max_records=max_records,
                                max_dimensions=max_dimensions, max_readers=max_readers)
        made_segments: list[Segment] = []
        made_sems: list[posix_ipc.Semaphore] = []
        try:
            wake = posix_ipc.Semaphore(semaphore_name(name, WAKE_SEM), posix_ipc.O_CREX, mode=0o600)
            made_sems.append(wake)
            for i, spec in enumerate(pools):
                made_segments.append(Segment.create(segment_name(name, f"pool{i}"), spec.nbytes))
            control_seg = Segment.create(segment_name(name, CONTROL), layout.size, reserve=True)
            made_segments.append(control_seg)
            cls._initialise(control_seg, layout, rows, len(pools), name=name, memory_limit=memory_limit,
                            thresholds=thresholds)
        except OSError as exc:
            cls._discard(made_segments, made_sems)
            if is_full(exc):  # a semaphore is a small file in /dev/shm too
                raise full_error(4096, f"a semaphore of instance {name!r}") from None
            raise
        except BaseException:
            cls._discard(made_segments, made_sems)
            raise
        control = Control(control_seg.mm, layout)
        pool_segs: list[Segment | None] = made_segments[:-1] + [None] * (len(rows) - len(pools))
        inst = cls(name, control_seg, control, pool_segs, owner=True, thresholds=thresholds)
        inst._wake = wake
        inst._mapped_sems.append(wake)
        inst.huge_pages = huge_pages
        if huge_pages:
            for seg in made_segments[:-1]:
                inst._advise(seg)
        logger.info("created shmpool instance {!r}: {} pools, limit {} bytes, control {} bytes",
                    name, len(pools), memory_limit, layout.size)
        return inst

    @staticmethod
    def _discard(segments: list[Segment], sems: list[posix_ipc.Semaphore]) -> None:
        for seg in segments:
            seg.close()
            seg.unlink()
        for sem in sems:
            sem.unlink()
            sem.close()

    @staticmethod
    def _clear_stale(name: str, replace_stale: bool) -> None:
        # Another user's objects under our name are neither attached to nor swept (root could
        # unlink them): the name is theirs until they or an administrator remove them.
        raise_if_foreign(name)
        if SHM_DIR.is_dir() and not shm_path(segment_name(name, CONTROL)).exists():
            # No control segment, so nothing to attach to: skip attach, whose error message
            # reads /proc/locks, which waits for an RCU grace period (measured 1-12 ms per start).
            if cleanup(name):
                logger.warning("removed leftovers of a crashed instance {!r}", name)
            return
        try:
            probe = SharedInstance.attach(name)
        except AttachError:
            if cleanup(name):
                logger.warning("removed leftovers of a crashed instance {!r}", name)
            return
        pid = int(probe.control.words[W.COORDINATOR_PID])
        probe.close()
        raise InstanceExists(name=name, owner_pid=pid)

    @staticmethod
    def _initialise(seg: Segment, layout: Layout, pools: Sequence[PoolSpec], configured: int, *,
                    name: str, memory_limit: int, thresholds: Thresholds) -> None:
        control = Control(seg.mm, layout)
        try:
            words = control.words
            pid, start = my_identity()
            words[W.MEMORY_LIMIT] = memory_limit
            words[W.WARN_PERMILLE] = thresholds.warn
            words[W.EVICT_PERMILLE] = thresholds.evict
            words[W.REFUSE_PERMILLE] = thresholds.refuse
            words[W.COORDINATOR_PID] = pid
            words[W.COORDINATOR_START] = start
            words[W.STATE] = STATE_RUNNING
            words[W.CONFIGURED_POOLS] = configured
            for i, spec in enumerate(pools):
                row = control.pools[i]
                row[P.BLOCK_SIZE] = spec.block_size
                row[P.BLOCK_COUNT] = spec.block_count
                row[P.BITMAP_OFFSET] = layout.bitmap_offsets[i]
                row[P.BITMAP_BYTES] = layout.bitmap_sizes[i]
                row[P.PRESENT] = int(i < configured)
                row[P.BASE] = i if i < configured else (i - configured) // ((len(pools) - configured) // configured)  # rows: configured, then `growth` per configured pool in order
                # Bits past the last block read as used, so no run ever extends past the pool.
                bm = control.bitmaps[i]
                tail = spec.block_count % 8
                if tail:
                    bm[-1] = (0xFF << tail) & 0xFF
        finally:
            control.release()
        # The table lock, before the magic: nobody can attach (and lock) until it is made.
        shared_lock(seg.mm, layout.words_offset, name=name, role="table", create=True).close()
        import secrets  # the creating coordinator only; not in every reader's start
        header = pack_header(layout, control_size=layout.size, instance_token=secrets.randbits(63),
                             created_ns=time.time_ns(), name=name, magic=b"\0" * 8)
        seg.mm[:len(header)] = header
        seg.mm[:8] = MAGIC  # last: attachers treat a zero magic as "not ready"

    @classmethod
    def attach(cls, name: str) -> "SharedInstance":
        """Map the shared objects of running instance ``name``; raises AttachError otherwise.

        Only the control segment is mapped now; each pool segment on its first use
        (:meth:`pool_segment`, :meth:`view`): a reader whose layers are served from region
        files may never need most of them, and each mapped one was ~0.5 kB of its private
        memory (its Segment, finalizer and mmap objects; docs/performance.md, issue 22)."""
        validate_name(name)
        check_system(name)
        control_seg = Segment.attach(segment_name(name, CONTROL), instance=name)
        try:
            layout = cls._read_layout(name, control_seg)
            control = Control(control_seg.mm, layout)
            words = control.words_mv
            pid, start = words[W.COORDINATOR_PID], words[W.COORDINATOR_START]
            if not is_alive(pid, start):
                control.release()
                raise AttachError(name=name, reason=f"its coordinator (pid {pid}) "
                                                    "is not running; run `shmpool cleanup` to remove leftovers")
        except BaseException:
            control_seg.close()
            raise
        pools: list[Segment | None] = [None] * layout.pool_count
        inst = cls(name, control_seg, control, pools, owner=False, thresholds=None)
        try:
            inst._verify_pools()
        except BaseException:
            inst.close()
            raise
        return inst

    def _verify_pools(self) -> None:
        """UntrustedObject now if a present pool segment is not ours, 0600: each is mapped (and
        verified again, by its descriptor) only on first use, but a planted or opened-up segment
        must refuse the attach, not a lookup much later (tests/test_trust.py). A stat each,
        nothing mapped; a missing one passes (mapping it will say so, if it is ever needed)."""
        for pool in range(self.control.layout.pool_count):
            if self._pool_word(pool, P.PRESENT):
                verify_path(shm_path(segment_name(self.name, f"pool{pool}")), instance=self.name)

    @staticmethod
    def _read_layout(name: str, seg: Segment) -> Layout:
        if seg.size < HEADER.size:
            raise AttachError(name=name, reason=f"control segment too small ({seg.size} bytes)")
        fields = HEADER.unpack_from(seg.mm, 0)
        magic, version = fields[0], fields[1]
        if magic != MAGIC:
            raise AttachError(name=name, reason="control segment not initialised (coordinator starting or crashed)")
        if version != LAYOUT_VERSION:
            raise AttachError(name=name, reason=f"layout version {version}, this library reads {LAYOUT_VERSION}")
        pool_count, max_records, max_dims, max_readers = fields[6:10]
        pools_offset = fields[11]
        counts = [int(_I64.unpack_from(seg.mm, pools_offset + (i * POOL_COLS + P.BLOCK_COUNT) * 8)[0])
                  for i in range(pool_count)]
        layout = Layout.compute(counts, max_records=max_records, max_dimensions=max_dims, max_readers=max_readers)
        if (layout.size != fields[3] or layout.pins_offset != fields[16] or layout.tags_offset != fields[18]
                or layout.backed_offsets[0] != fields[19] or layout.max_files != fields[20]
                or layout.files_offset != fields[22]):
            raise AttachError(name=name, reason="control segment header disagrees with its own layout")
        return layout

    # ----------------------------------------------------------------- memory access

    def view(self, pool: int, offset: int, length: int) -> memoryview:
        """Writable view of ``length`` bytes at byte ``offset`` of pool ``pool`` (bounds-checked)."""
        mv = self._pool_views[pool] if 0 <= pool < len(self._pool_views) else None
        if mv is None:
            seg = self.pool_segments[pool] if 0 <= pool < len(self.pool_segments) else None
            if seg is None:
                seg = self._map_pool(pool)
            mv = self._pool_views[pool] = memoryview(seg.mm)
        if offset < 0 or length < 0 or offset + length > len(mv):
            raise OutOfBounds(what=f"pool {pool} of instance {self.name!r}", offset=offset,
                              length=length, limit=len(mv))
        return mv[offset:offset + length]

    def pool_segment(self, pool: int) -> Segment | MappedFile:
        """The segment of pool number ``pool``, mapping a growth segment or a served region file
        (pool numbers from ``pool_count`` on: the files section) on first use.

        A file is mapped once per process and kept: its row never changes while the instance
        lives. Raises MappedFileChanged if the file is no longer the one published. (A file's
        MappedFile is made per call: the read path asks :meth:`pool_buffer`.)"""
        if pool >= len(self.pool_segments):
            return MappedFile(self._file_path(pool - len(self.pool_segments)), self._mapped_file(pool))
        seg = self.pool_segments[pool] if 0 <= pool < len(self.pool_segments) else None
        if seg is None:
            seg = self._map_pool(pool)
        return seg

    def pool_buffer(self, pool: int) -> mmap.mmap:
        """The mapping of pool number ``pool``, a pool segment's or a served region file's (mapped
        on first use, as :meth:`pool_segment`)."""
        if pool >= len(self.pool_segments):
            return self._mapped_file(pool)
        return self.pool_segment(pool).mm

    def pool_export(self, pool: int) -> memoryview:
        """A read-only view of the whole mapping of pool number ``pool`` (mapping it on first
        use), made once: every Generation whose layer index lies in that pool holds this one view
        by reference instead of taking a buffer export of its own (80 B each; docs/performance.md,
        issue 22). Its export keeps the mapping while any of them lives. Never ``release()`` it:
        close() drops it, and the unmap then waits for the last Generation, as for any view."""
        exports = self._exports
        view = exports[pool] if pool < len(exports) else None
        if view is None:
            if pool >= len(exports):
                exports.extend([None] * (pool + 1 - len(exports)))
            view = exports[pool] = memoryview(self.pool_buffer(pool)).toreadonly()
        return view

    def _file_row(self, f: int) -> tuple[int, ...]:
        """File row ``f``, read from the mapping, not through a numpy view of the section (a
        reader's private memory, docs/performance.md issue 22); it never changes once STATE is set.
        Raises OutOfBounds unless it is set."""
        layout = self.control.layout
        row = _FILE_ROW.unpack_from(self.control_segment.mm, layout.files_offset + f * FILE_COLS * 8) \
            if 0 <= f < layout.max_files else None
        if row is None or row[F.STATE] != FILE_SET:
            raise OutOfBounds(what=f"pool number of instance {self.name!r} (no such pool or file)",
                              offset=len(self.pool_segments) + f, length=1,
                              limit=len(self.pool_segments) + layout.max_files)
        return row

    def _file_path(self, f: int) -> str:
        """Where file row ``f``'s region file is: ``<store folder>/<digest in hex>.region``."""
        if self._store is None:
            self._store = str(store_dir())
        row = self._file_row(f)
        return os.path.join(self._store, words_digest(row[F.DIGEST0], row[F.DIGEST1]).hex() + SUFFIX)

    def _mapped_file(self, pool: int) -> mmap.mmap:
        f = pool - len(self.pool_segments)
        mapped = self._files[f] if f < len(self._files) else None
        if mapped is not None:
            return mapped
        row = self._file_row(f)
        mapped = map_file(self._file_path(f), dev=row[F.DEV], ino=row[F.INO], size=row[F.SIZE], instance=self.name)
        self._keep_file(f, mapped)
        return mapped

    def _keep_file(self, f: int, mapped: mmap.mmap) -> None:
        files = self._files
        if f >= len(files):
            files.extend([None] * (f + 1 - len(files)))
        files[f] = mapped
        self._mapped.append(mapped)

    def add_file(self, fd: int, st: os.stat_result, digest: bytes) -> int:
        """Owner only: give the served region file open as ``fd`` (with stat ``st`` and store
        digest ``digest``) a file row, the one it has already if any, and map it here from that
        very descriptor; returns its pool number, or -1 when the files section is full (the
        caller copies the region into a pool instead). Raises MappedFileChanged if ``fd`` is not
        safe to map (substrate/mapped_files.py)."""
        files = self.control.files
        base = len(self.pool_segments)
        states = files[:, F.STATE].tolist()
        for f, state in enumerate(states):
            if state == FILE_SET and (int(files[f, F.DEV]), int(files[f, F.INO])) == (st.st_dev, st.st_ino):
                return base + f
        free = next((f for f, state in enumerate(states) if state != FILE_SET), None)
        if free is None:
            return -1
        path = os.path.join(str(store_dir()), digest.hex() + SUFFIX)
        self._keep_file(free, map_fd(fd, path, dev=st.st_dev, ino=st.st_ino, size=st.st_size, instance=self.name))
        row = files[free]
        row[F.DEV], row[F.INO], row[F.SIZE] = st.st_dev, st.st_ino, st.st_size
        row[F.DIGEST0], row[F.DIGEST1] = digest_words(digest)
        row[F.STATE] = FILE_SET  # last: a row is read only once an index names its pool
        return base + free

    def _map_pool(self, pool: int) -> Segment:
        if not 0 <= pool < len(self.pool_segments) or not self._pool_word(pool, P.PRESENT):
            raise OutOfBounds(what=f"pool index of instance {self.name!r} (no such pool segment)",
                              offset=pool, length=1, limit=len(self.pool_segments))
        seg = Segment.attach(segment_name(self.name, f"pool{pool}"), instance=self.name)
        return self._adopt(pool, seg)

    def _adopt(self, pool: int, seg: Segment) -> Segment:
        """Keep ``seg`` as pool ``pool``'s mapping (its writable view is made by view(), if ever)."""
        self.pool_segments[pool] = seg
        self._mapped.append(seg)
        return seg

    def _create_growth_segment(self, pool: int) -> None:
        """Called by the table, lock held, before it marks growth row ``pool`` present."""
        size = int(self.control.pools[pool, P.BLOCK_SIZE]) * int(self.control.pools[pool, P.BLOCK_COUNT])
        name = segment_name(self.name, f"pool{pool}")
        try:
            seg = Segment.create(name, size)
        except posix_ipc.ExistentialError:  # a grower died after creating it, before marking it present
            posix_ipc.unlink_shared_memory(name)
            seg = Segment.create(name, size)
        self._adopt(pool, seg)
        if self.huge_pages:
            self._advise(seg)

    def _back_pages(self, pool: int, offset: int, length: int) -> None:
        """The table's page reservation for ``length`` bytes at ``offset`` of pool ``pool``."""
        bs = self.table.block_sizes[pool]
        seg = self.pool_segment(pool)
        assert isinstance(seg, Segment)  # the table allocates in pools only, never in files
        seg.reserve_pages(
            offset, length, what=f"{length // bs} blocks of {bs} B in pool{pool} of instance {self.name!r}")

    def _advise(self, seg: Segment) -> None:
        why_not = seg.advise_huge_pages()
        if why_not is None:
            logger.info("huge pages requested for {}", seg.name)
        else:
            logger.warning("huge pages not available for {}: {}; using normal pages", seg.name, why_not)

    def handle_view(self, handle: Handle) -> memoryview:
        """Writable view of exactly the ``nbytes`` requested for ``handle``."""
        bs = self.table.block_sizes[handle.pool]
        return self.view(handle.pool, handle.first_block * bs, handle.nbytes)

    # ----------------------------------------------------------------- the coordinator's words

    def coordinator(self) -> tuple[int, int]:
        """(pid, start token) of the coordinator that created this instance."""
        words = self.control.words_mv
        return words[W.COORDINATOR_PID], words[W.COORDINATOR_START]

    def is_running(self) -> bool:
        """True while the coordinator serves (ControlWord.STATE); False once it is stopping."""
        return self.control.words_mv[W.STATE] == STATE_RUNNING

    def coordinator_alive(self) -> bool:
        """True while the coordinator serves and its process (pid and start token) lives."""
        return self.is_running() and is_alive(*self.coordinator())

    def mark_stopping(self) -> None:
        """Owner only: tell every process the coordinator is stopping (ControlWord.STATE)."""
        self.control.words_mv[W.STATE] = STATE_STOPPING

    def locate(self, view: memoryview) -> tuple[Segment, int]:
        """The pool segment and byte offset at which ``view`` (from :meth:`view`) starts.

        For writers that fill a view through the segment's file descriptor (``sendfile``)
        rather than through the mapping. Raises OutOfBounds if no mapped pool holds it."""
        addr = np.frombuffer(view, np.uint8).__array_interface__["data"][0]
        for seg, whole in zip(self.pool_segments, self._pool_views):
            if seg is None or whole is None:
                continue
            base = np.frombuffer(whole, np.uint8).__array_interface__["data"][0]
            if base <= addr and addr + len(view) <= base + len(whole):
                return seg, addr - base
        raise OutOfBounds(what=f"the pools of instance {self.name!r} (view not in any)", offset=addr,
                          length=len(view), limit=0)

    # ----------------------------------------------------------------- lifetime

    def wake_coordinator(self) -> None:
        """Post the coordinator's wake semaphore (opened on first use; cheap afterwards)."""
        if self._wake is None:
            try:
                self._wake = open_semaphore(semaphore_name(self.name, WAKE_SEM), instance=self.name)
            except posix_ipc.ExistentialError:
                return  # the coordinator is going away; the caller's timeout handles it
            self._mapped_sems.append(self._wake)
        self._wake.release()

    def wait_for_wake(self, timeout: float) -> bool:
        """Owner only: sleep until a wake or ``timeout`` seconds; True if woken."""
        wake = self._wake
        if wake is None:
            raise ShmPoolError(f"instance {self.name!r}: only its owner waits for wake-ups")
        try:
            wake.acquire(timeout)
        except posix_ipc.BusyError:
            return False
        return True

    def close(self) -> None:
        """Unmap everything in this process (idempotent); never removes names."""
        if self._closed:
            return
        self._closed = True
        self._present = self._present_pools()  # unlink() after close() still needs it
        for mv in self._pool_views:
            if mv is None:
                continue
            try:
                mv.release()
            except BufferError:
                logger.debug("a pool view of {!r} is still exported; unmapped when it is collected", self.name)
        self.lock.close()  # first: it holds the control mapping's buffer
        self.control.release()
        self._finalizer()

    def unlink(self) -> None:
        """Remove every name of this instance (owner only; idempotent)."""
        # Known names first (the only way on systems without a listable /dev/shm), then the sweep.
        for seg in [self.control_segment, *(s for s in self.pool_segments if s is not None)]:
            seg.unlink()
        for pool in self._present_pools():  # including growth segments other processes created
            if self.pool_segments[pool] is None:
                try:
                    posix_ipc.unlink_shared_memory(segment_name(self.name, f"pool{pool}"))
                except posix_ipc.ExistentialError:
                    logger.debug("growth segment pool{} of {!r} was already unlinked", pool, self.name)
        for kind in (WAKE_SEM,):
            try:
                posix_ipc.unlink_semaphore(semaphore_name(self.name, kind))
            except posix_ipc.ExistentialError:
                logger.debug("{} semaphore of {!r} was already unlinked", kind, self.name)
        removed = cleanup(self.name)
        logger.info("instance {!r} unlinked (its known names, then {} more found by the sweep)",
                    self.name, len(removed))

    def _present_pools(self) -> list[int]:
        if self._present is None:  # still mapped: read it live
            return [int(p) for p in np.flatnonzero(self.control.pools[:, P.PRESENT])]
        return self._present

    def destroy(self) -> None:
        """Owner's stop: unmap and unlink."""
        self.close()
        self.unlink()

    def __enter__(self) -> "SharedInstance":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owner:
            self.destroy()
        else:
            self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        role = "owner" if self.owner else "attached"
        return f"<SharedInstance {self.name!r} {role} pid={os.getpid()}>"


def coordinator_pid(name: str, lock_path: str | os.PathLike[str] | None = None) -> int | None:
    """The pid of the coordinator that owns ``name``, or None if none does.

    Read from the instance's control segment once it can be attached to; while its coordinator
    is still starting (the header is written last) that is not possible yet, so then from the
    kernel's record of which process holds the coordinator's lock file ``lock_path`` (an flock,
    taken before anything is created): a start race's loser can name its winner."""
    try:
        probe = SharedInstance.attach(name)
    except ShmPoolError:
        pass
    else:
        try:
            return int(probe.coordinator()[0])
        finally:
            probe.close()
    return None if lock_path is None else flock_holder(lock_path)


SWEEP_MIN_AGE = 60.0  # seconds: far longer than any coordinator takes from its first object to its header


def sweep_dead(prefix: str, *, min_age: float = SWEEP_MIN_AGE) -> list[str]:
    """Remove every instance under ``prefix`` whose coordinator is dead; return the names removed.

    For what a coordinator killed with no one to stop it leaves behind (an OOM kill of a whole
    container or test worker). An instance counts as dead when attaching to it fails
    (AttachError: coordinator gone, header never written, a segment missing) and none of its
    objects changed for ``min_age`` seconds: a coordinator that is still starting has objects
    but no header yet, and is younger than that. Instances holding another user's objects, those
    of another layout version (another shmpool release cannot judge their coordinator), and live
    ones are left alone.
    """
    removed = []
    for name in instance_names(prefix):
        changed = newest_change(name)
        if changed is None or time.time() - changed < min_age or foreign_objects(name) or _other_layout(name):
            continue
        try:
            SharedInstance.attach(name).close()
            continue  # alive
        except AttachError:
            pass
        if cleanup(name):
            logger.warning("removed the leftovers of instance {!r}: its coordinator is dead", name)
            removed.append(name)
    return removed


def _other_layout(name: str) -> bool:
    """True if ``name``'s control segment carries a valid header of another layout version."""
    try:
        seg = Segment.attach(segment_name(name, CONTROL), instance=name)
    except ShmPoolError:
        return False  # no readable control segment: nothing says another release owns it
    try:
        if seg.size < HEADER.size:
            return False
        magic, version = HEADER.unpack_from(seg.mm, 0)[:2]
        return bool(magic == MAGIC and version != LAYOUT_VERSION)
    finally:
        seg.close()
