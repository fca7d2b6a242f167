"""The cross-process allocation table: one bitmap per pool, records as the source of truth.

Any attached process may allocate and free. Every mutation happens under the table's
:class:`~shmpool.substrate.lock.SharedLock`. The allocation *records* are authoritative; the bitmaps and
usage counters are derived from them. A record becomes live only when its STATE is stored (last
step of allocate) and stops being live when STATE is cleared (first step of free), so a process
killed anywhere inside the critical section leaves records that are each either whole or absent.
The next holder after a takeover rebuilds bitmaps and counters from the records and reclaims the
records of dead owners: no block is ever owned twice and nothing a dead process held leaks.

One exception to "dead owner, reclaimed": a record allocated ``lent=True`` (RecordState.LENT,
a job's spilled arguments) is live like any other, but no dead-owner sweep frees it, whichever
process sweeps. Its blocks are lent to a job board that may still name them for a worker reading
them in place, and only the board can tell: the coordinator lists the lent records of dead owners
(:meth:`AllocationTable.lent_of_dead`) and reclaims those no slot names (:meth:`reclaim_lent`,
called from shmpool/jobs/arg_spill.py).

A handle is returned only once its blocks' pages are reserved in /dev/shm (``shmpool.substrate.backing``),
so writing through it can never SIGBUS; a full filesystem is a SharedMemoryFull instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from ._log import logger

from ._proc import is_alive, my_identity
from .backing import Backing
from ..errors import AllocationFailed, AllocationFailure, InvalidHandle, LimitExceeded, SharedMemoryFull
from .layout import P, R, W, Control, RecordState
from .limits import Budget, PressureHook, Thresholds, after_allocation
from .lock import SharedLock
from .stats import PoolStats, TableStats

__all__ = ["Handle", "AllocationTable", "free_runs"]

_LIVE, _FREE, _LENT = int(RecordState.LIVE), int(RecordState.FREE), int(RecordState.LENT)
_HELD = (_LIVE, _LENT)  # the STATE values of a live record
# A pool that can hold a request: (bytes it reserves, -block size, pool). Sorted, least waste
# comes first and, on a tie, the larger blocks.
_Fit = tuple[int, int, int]


def free_runs(bitmap: np.ndarray, block_count: int, scratch: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(first blocks, lengths) of every run of free blocks in a packed little-endian bitmap.

    The one scan of a pool's bits, for allocation (best fit) and statistics (longest run).
    ``scratch``: an int8 array of ``block_count + 2`` whose ends are 1, reused across calls by
    the allocate path (saves an allocation of the pool's size per call); a caller that may run
    concurrently with another passes none.
    """
    if scratch is None:
        scratch = np.ones(block_count + 2, dtype=np.int8)
    scratch[1:-1] = np.unpackbits(bitmap, count=block_count, bitorder="little")
    edges = np.diff(scratch)  # [1, bits..., 1]: a run of 0s starts at a -1 edge and ends at a +1
    starts = np.flatnonzero(edges == -1)
    return starts, np.flatnonzero(edges == 1) - starts


@dataclass(frozen=True)
class Handle:
    """A live allocation: ``block_count`` blocks from ``first_block`` of pool ``pool``."""
    pool: int
    first_block: int
    block_count: int
    nbytes: int
    record: int
    serial: int
    instance_token: int

    def __repr__(self) -> str:
        return (f"Handle(pool={self.pool}, first_block={self.first_block}, "
                f"block_count={self.block_count}, nbytes={self.nbytes}, record={self.record})")


class AllocationTable:
    """Allocate and free blocks of the instance's pools from any attached process."""

    def __init__(self, control: Control, lock: SharedLock, *, instance_token: int,
                 thresholds: Thresholds, grow: Callable[[int], None] | None = None,
                 back: Callable[[int, int, int], None] | None = None) -> None:
        self._ctl = control
        self._lock = lock
        self._token = instance_token
        self.thresholds = thresholds
        self.pressure_hook: PressureHook | None = None
        self._in_hook = False
        self._grow = grow  # creates growth row p's segment in this process (lock held)
        self._back = back  # (pool, offset, length): reserves those pages or raises SharedMemoryFull
        self._backing = Backing(control)
        pools = control.pools
        self.block_sizes = [int(b) for b in pools[:, P.BLOCK_SIZE]]
        self.block_counts = [int(c) for c in pools[:, P.BLOCK_COUNT]]
        self.configured = int(control.words[W.CONFIGURED_POOLS])  # the rest are growth rows
        lock.on_recover = self._after_takeover
        self._record_hint = 0
        # Scratch for _find_run, made on a pool's first multi-block search: a reader process never
        # allocates, and 55 KiB of these per reader was 17% of the sample's size over 100 readers.
        self._edge_input: list[np.ndarray | None] = [None] * len(self.block_counts)

    # ----------------------------------------------------------------- allocate / free

    def allocate(self, nbytes: int, *, lent: bool = False) -> Handle:
        """Reserve contiguous blocks for ``nbytes`` in the best-fitting pool; blocks the lock.

        Best fit = least waste (whole blocks minus ``nbytes``) among pools that have a free run
        long enough; on a tie the pool with larger blocks wins (fewer bits to manage). Raises
        LimitExceeded when the refusal threshold would be passed, AllocationFailed when no pool
        has room, SharedMemoryFull (an AllocationFailed) when /dev/shm cannot back blocks never
        used before and no used-before blocks are free. The calling process owns the blocks: if
        it dies they are reclaimed, unless ``lent``: then the record is LENT, which no dead-owner
        sweep frees (the module docstring says who does).
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes <= 0:
            raise AllocationFailed(nbytes=nbytes, reason="size must be a positive integer",
                                   kind=AllocationFailure.INVALID_SIZE)
        nbytes = int(nbytes)
        present = self._ctl.pools[:, P.PRESENT].tolist()
        fitting = [(-(-nbytes // bs) * bs, -bs, p) for p, bs in enumerate(self.block_sizes)
                   if -(-nbytes // bs) <= self.block_counts[p]]
        plan = sorted(f for f in fitting if present[f[2]])
        if not fitting:
            with self._lock:
                self._count_failure(limit=False)
            raise AllocationFailed(nbytes=nbytes, reason="larger than any pool", pools=self._pool_summary(),
                                   kind=AllocationFailure.TOO_LARGE)
        words = self._ctl.words
        state = _LENT if lent else _LIVE
        with self._lock:
            before = int(words[W.USED_BYTES])
            try:
                handle = self._allocate_locked(nbytes, plan, state)
                # Dead processes may be sitting on exactly the blocks we need.
                if handle is None and self._reclaim_dead_locked():
                    handle = self._allocate_locked(nbytes, plan, state)
                if handle is None:
                    handle = self._grow_locked(nbytes, sorted(fitting), state)
            except LimitExceeded:
                self._count_failure(limit=True, plan=plan)
                raise
            if handle is None:
                self._count_failure(limit=False, plan=plan)
            else:
                after = int(words[W.USED_BYTES])
                cold = self._back is not None and not self._backing.covers(handle.pool, handle.first_block,
                                                                          handle.block_count)
        if handle is None:
            raise AllocationFailed(nbytes=nbytes, reason="no pool has a free run long enough",
                                   pools=self._pool_summary())
        if cold:
            handle = self._back_blocks(nbytes, handle, plan, state)
            after = int(words[W.USED_BYTES])
        logger.debug("allocated {} bytes: {}", nbytes, handle)
        if not self._in_hook:
            self._in_hook = True
            try:
                after_allocation(before, after, int(words[W.MEMORY_LIMIT]), self.thresholds, self.pressure_hook)
            finally:
                self._in_hook = False
        return handle

    def _back_blocks(self, nbytes: int, handle: Handle, plan: list[_Fit], state: int) -> Handle:
        """Reserve the pages of a fresh allocation, outside the lock (a cold 4 MiB takes ~1.3 ms).

        If /dev/shm is full, give the blocks back and look for a free run of blocks that are
        backed already (freed by earlier allocations); only if there is none does it raise."""
        bs = self.block_sizes[handle.pool]
        assert self._back is not None  # only cold allocations come here, and only with a backer
        try:
            self._back(handle.pool, handle.first_block * bs, handle.block_count * bs)
        except SharedMemoryFull as full:
            with self._lock:
                self._undo_locked(handle)
                try:
                    fallback = self._allocate_locked(nbytes, plan, state, backed_only=True)
                except LimitExceeded:  # the full filesystem is the news, not the limit
                    fallback = None
                if fallback is None:
                    self._count_failure(limit=False, plan=plan)
                    self._ctl.words[W.SHM_FULL] += 1
            if fallback is None:
                raise full from None
            logger.debug("/dev/shm full: {} bytes placed in blocks backed earlier: {}", nbytes, fallback)
            return fallback
        except BaseException:  # e.g. the segment is gone: the handle was never handed out
            with self._lock:
                self._undo_locked(handle)
            raise
        with self._lock:
            self._backing.mark(handle.pool, handle.first_block, handle.block_count, bs)
        return handle

    def _undo_locked(self, handle: Handle) -> None:
        """Take back an allocation never handed out (its pages could not be reserved)."""
        row = self._ctl.records[handle.record]
        if int(row[R.STATE]) in _HELD and int(row[R.SERIAL]) == handle.serial:
            self._release_record(handle.record)
            self._ctl.words[W.ALLOC_COUNT] -= 1
            self._ctl.pools[handle.pool][P.ALLOC_COUNT] -= 1

    def _allocate_locked(self, nbytes: int, plan: list[_Fit], state: int = _LIVE, *,
                         backed_only: bool = False) -> Handle | None:
        """The first pool of ``plan`` with a free run takes the allocation: its handle, or None if
        no pool has a run. Raises LimitExceeded when the next pool to try would pass the limit.
        ``state``: the record's commit value, LIVE or LENT."""
        ctl = self._ctl
        words = ctl.words
        budget = Budget.read(words)
        used = budget.used
        for reserve, _neg_bs, p in plan:
            if budget.refuses(reserve):
                # The plan is sorted by reserve: every later pool would pass the limit too.
                raise LimitExceeded(requested=nbytes, used=used, limit=budget.limit, refuse_at=budget.refuse_at)
            count = reserve // self.block_sizes[p]
            first = self._find_run(p, count, backed_only)
            if first < 0:
                continue
            rec = self._free_record()
            if rec < 0:
                raise AllocationFailed(nbytes=nbytes, reason=f"allocation table full ({len(ctl.records)} records)",
                                      kind=AllocationFailure.TABLE_FULL)
            serial = int(words[W.ALLOC_SERIAL]) + 1
            words[W.ALLOC_SERIAL] = serial
            pid, start = my_identity()
            row = ctl.records[rec]
            row[R.POOL] = p
            row[R.FIRST_BLOCK] = first
            row[R.BLOCK_COUNT] = count
            row[R.NBYTES] = nbytes
            row[R.SERIAL] = serial
            row[R.OWNER_PID] = pid
            row[R.OWNER_START] = start
            self._set_bits(p, first, count, 1)
            prow = ctl.pools[p]
            prow[P.USED_BLOCKS] += count
            prow[P.PEAK_USED] = max(int(prow[P.PEAK_USED]), int(prow[P.USED_BLOCKS]))
            prow[P.ALLOC_COUNT] += 1
            words[W.USED_BYTES] = used + reserve
            words[W.PEAK_BYTES] = max(int(words[W.PEAK_BYTES]), used + reserve)
            words[W.ALLOC_COUNT] += 1
            words[W.LIVE_RECORDS] += 1
            row[R.STATE] = state  # commit point
            return Handle(p, first, count, nbytes, rec, serial, self._token)
        return None

    def _grow_locked(self, nbytes: int, fitting: list[_Fit], state: int = _LIVE) -> Handle | None:
        """Every present pool is too full: create the best-fitting reserved growth segment,
        if the limit allows what the request needs (LimitExceeded if not), and allocate from it."""
        if self._grow is None:
            return None
        pools = self._ctl.pools
        for reserve, neg_bs, p in fitting:
            if int(pools[p, P.PRESENT]):
                continue
            words = self._ctl.words
            budget = Budget.read(words)
            if budget.refuses(reserve):
                raise LimitExceeded(requested=nbytes, used=budget.used, limit=budget.limit,
                                     refuse_at=budget.refuse_at)
            self._grow(p)
            pools[p, P.PRESENT] = 1
            words[W.POOL_GROWTHS] += 1
            logger.info("pool {} ({} B blocks) full: added growth segment pool{} of {} blocks",
                        int(pools[p, P.BASE]), -neg_bs, p, self.block_counts[p])
            return self._allocate_locked(nbytes, [(reserve, neg_bs, p)], state)
        return None

    def free(self, handle: Handle) -> None:
        """Release the blocks of ``handle``; blocks the lock. Raises InvalidHandle on a double free,
        a stale handle, or a handle from another instance."""
        if not isinstance(handle, Handle):
            raise InvalidHandle(handle=handle, reason="not a shmpool allocation handle")
        if handle.instance_token != self._token:
            raise InvalidHandle(handle=handle, reason="it belongs to another shmpool instance")
        if not 0 <= handle.record < len(self._ctl.records) or not 0 <= handle.pool < len(self.block_sizes):
            raise InvalidHandle(handle=handle, reason="record or pool index out of range")
        with self._lock:
            self._free_locked(handle)
        logger.debug("freed {}", handle)

    def _free_locked(self, handle: Handle) -> None:
        row = self._ctl.records[handle.record]
        if int(row[R.STATE]) not in _HELD or int(row[R.SERIAL]) != handle.serial:
            raise InvalidHandle(handle=handle, reason="already freed (double free) or reclaimed")
        if (int(row[R.POOL]), int(row[R.FIRST_BLOCK]), int(row[R.BLOCK_COUNT])) != (
                handle.pool, handle.first_block, handle.block_count):
            raise InvalidHandle(handle=handle, reason="does not match its allocation record")
        self._release_record(handle.record)
        self._ctl.words[W.FREE_COUNT] += 1
        self._record_hint = handle.record  # reuse the warm record next

    def _release_record(self, rec: int) -> None:
        ctl = self._ctl
        row = ctl.records[rec]
        row[R.STATE] = _FREE  # commit point: from here the blocks are no longer owned
        p, first, count = int(row[R.POOL]), int(row[R.FIRST_BLOCK]), int(row[R.BLOCK_COUNT])
        self._set_bits(p, first, count, 0)
        ctl.pools[p][P.USED_BLOCKS] -= count
        ctl.words[W.USED_BYTES] -= count * self.block_sizes[p]
        ctl.words[W.LIVE_RECORDS] -= 1

    def transfer(self, handle: Handle, pid: int, start: int) -> None:
        """Make process (pid, start) the owner of ``handle``, e.g. a worker handing a large
        result to its client: if the new owner dies, the blocks are reclaimed with it."""
        with self._lock:
            row = self._ctl.records[handle.record]
            if int(row[R.STATE]) not in _HELD or int(row[R.SERIAL]) != handle.serial:
                raise InvalidHandle(handle=handle, reason="not live: cannot transfer ownership")
            row[R.OWNER_START] = start
            row[R.OWNER_PID] = pid

    def transfer_unless_taken(self, handle: Handle, pid: int, start: int, *, caller: tuple[int, int]) -> bool:
        """:meth:`transfer`, unless a live process other than ``caller`` (the process asking, or
        the dead owner it acts for) owns ``handle`` now: that process took the blocks over and
        frees them itself (a worker that kept a view of a job's spilled arguments,
        shmpool/jobs/arg_spill.py). Owner read and changed in one lock round, so a take-over
        racing this call is either seen or comes after. True if transferred."""
        with self._lock:
            row = self._ctl.records[handle.record]
            if int(row[R.STATE]) not in _HELD or int(row[R.SERIAL]) != handle.serial:
                raise InvalidHandle(handle=handle, reason="not live: cannot transfer ownership")
            owner = (int(row[R.OWNER_PID]), int(row[R.OWNER_START]))
            if owner != caller and owner != (pid, start) and is_alive(*owner):
                return False
            row[R.OWNER_START] = start
            row[R.OWNER_PID] = pid
            return True

    def handle_at(self, pool: int, first_block: int, nbytes: int, record: int, serial: int) -> Handle:
        """Rebuild the handle of an allocation described in shared memory (e.g. a spilled result)."""
        bs = self.block_sizes[pool]
        return Handle(pool, first_block, -(-nbytes // bs), nbytes, record, serial, self._token)

    def handle_of(self, record: int, serial: int) -> Handle:
        """The handle of live allocation ``record`` made with ``serial`` (a job's spilled
        arguments, named in its slot by these two words); InvalidHandle once it is freed or
        reclaimed. No lock: a live record's fields do not change until it is freed, and a free
        that races this read leaves a handle the table refuses (its serial no longer matches)."""
        records = self._ctl.records
        if not 0 <= record < len(records):
            raise InvalidHandle(handle=(record, serial), reason="record index out of range")
        row = records[record]
        if int(row[R.STATE]) not in _HELD or int(row[R.SERIAL]) != serial:
            raise InvalidHandle(handle=(record, serial), reason="already freed or reclaimed")
        return Handle(int(row[R.POOL]), int(row[R.FIRST_BLOCK]), int(row[R.BLOCK_COUNT]), int(row[R.NBYTES]),
                      record, serial, self._token)

    # ----------------------------------------------------------------- crash recovery

    def reclaim_dead(self) -> int:
        """Free every allocation whose owning process is dead; returns how many. Blocks the lock.

        Lent records (RecordState.LENT) are left alone: a job board may still name them for a
        worker that reads them, which this table cannot see (see :meth:`lent_of_dead`)."""
        with self._lock:
            return self._reclaim_dead_locked()

    def lent_of_dead(self) -> list[tuple[int, int]]:
        """(record, serial) of every lent allocation whose owner is dead; blocks the lock.

        For the coordinator, which frees those no slot of its board names. A dead owner allocates
        and submits no more, so a record listed here that no slot names *after* this call never
        will: the board must be read after this list is made, not before."""
        if not (self._ctl.records[:, R.STATE] == _LENT).any():
            return []  # the usual answer, without the lock (a record lent meanwhile is live anyway)
        with self._lock:
            records = self._ctl.records
            lent = np.flatnonzero(records[:, R.STATE] == _LENT)
            verdict: dict[tuple[int, int], bool] = {}
            dead: list[tuple[int, int]] = []
            for rec in lent.tolist():
                owner = (int(records[rec, R.OWNER_PID]), int(records[rec, R.OWNER_START]))
                alive = verdict.get(owner)
                if alive is None:
                    alive = verdict[owner] = is_alive(*owner)
                if not alive:
                    dead.append((rec, int(records[rec, R.SERIAL])))
            return dead

    def reclaim_lent(self, record: int, serial: int) -> bool:
        """Free lent allocation ``record`` if it still holds ``serial`` and its owner is still dead
        (one that was adopted meanwhile is kept); True if freed, counted as reclaimed. For the
        coordinator, once no slot of its board names it (shmpool/jobs/arg_spill.py)."""
        with self._lock:
            row = self._ctl.records[record]
            if (int(row[R.STATE]) != _LENT or int(row[R.SERIAL]) != serial
                    or is_alive(int(row[R.OWNER_PID]), int(row[R.OWNER_START]))):
                return False
            logger.info("reclaiming lent allocation record {} of dead pid {}", record, int(row[R.OWNER_PID]))
            self._release_record(record)
            self._ctl.words[W.RECLAIMED] += 1
            return True

    def _reclaim_dead_locked(self) -> int:
        records = self._ctl.records
        live = np.flatnonzero(records[:, R.STATE] == _LIVE)  # never LENT: see reclaim_dead
        verdict: dict[tuple[int, int], bool] = {}
        reclaimed = 0
        for rec in live:
            owner = (int(records[rec, R.OWNER_PID]), int(records[rec, R.OWNER_START]))
            alive = verdict.get(owner)
            if alive is None:
                alive = verdict[owner] = is_alive(*owner)
            if not alive:
                logger.info("reclaiming allocation record {} of dead pid {}", int(rec), owner[0])
                self._release_record(int(rec))
                reclaimed += 1
        self._ctl.words[W.RECLAIMED] += reclaimed
        return reclaimed

    def _after_takeover(self, dead_pid: int) -> None:
        """Runs under the lock after taking it from a dead holder: make everything consistent."""
        self.rebuild_from_records()
        reclaimed = self._reclaim_dead_locked()
        logger.warning("allocation table repaired after pid {} died holding its lock; "
                       "{} allocations of dead processes reclaimed", dead_pid, reclaimed)

    def rebuild_from_records(self) -> None:
        """Recompute bitmaps, per-pool usage and totals from the live records (lock held)."""
        ctl = self._ctl
        records = ctl.records
        for bm in ctl.bitmaps:
            bm[:] = 0
        used_blocks = [0] * len(self.block_sizes)
        bits = [np.zeros(c, dtype=np.uint8) for c in self.block_counts]
        live = 0
        for rec in np.flatnonzero(np.isin(records[:, R.STATE], _HELD)):
            p, first, count = (int(records[rec, R.POOL]), int(records[rec, R.FIRST_BLOCK]),
                               int(records[rec, R.BLOCK_COUNT]))
            if not (0 <= p < len(bits) and 0 <= first and count > 0 and first + count <= len(bits[p])) \
                    or bits[p][first:first + count].any():
                logger.error("allocation record {} is corrupt or overlaps another; dropped", int(rec))
                records[rec, R.STATE] = _FREE
                continue
            bits[p][first:first + count] = 1
            used_blocks[p] += count
            live += 1
        for p, b in enumerate(bits):
            self._init_bitmap(p, b)
            ctl.pools[p][P.USED_BLOCKS] = used_blocks[p]
        ctl.words[W.USED_BYTES] = sum(u * bs for u, bs in zip(used_blocks, self.block_sizes))
        ctl.words[W.LIVE_RECORDS] = live

    # ----------------------------------------------------------------- bitmap mechanics

    def _init_bitmap(self, p: int, bits: np.ndarray) -> None:
        bm = self._ctl.bitmaps[p]
        padded = np.ones(len(bm) * 8, dtype=np.uint8)  # bits past the last block read as used
        padded[:len(bits)] = bits
        bm[:] = np.packbits(padded, bitorder="little")

    def _find_run(self, p: int, count: int, backed_only: bool = False) -> int:
        """First block of a free run of ``count`` blocks in pool ``p``, or -1.

        One block: the first free bit, found bytewise (bits past the last block are stored as
        used, so they are never found). Several: the *shortest* adequate run, which keeps long
        runs whole for large requests; this scans the pool's bits, tens of µs at 16 Ki blocks.
        ``backed_only``: among blocks whose pages are reserved already.
        """
        bm = self._ctl.bitmaps[p]
        if backed_only:
            bm = self._backing.usable(p, bm)
        if count == 1:
            i = int((bm != 0xFF).argmax())
            byte = int(bm[i])
            if byte == 0xFF:
                return -1
            return i * 8 + ((~byte & (byte + 1)).bit_length() - 1)
        scratch = self._edge_input[p]
        if scratch is None:  # kept per pool: an allocation of the pool's size per call otherwise
            scratch = self._edge_input[p] = np.ones(self.block_counts[p] + 2, dtype=np.int8)
        starts, lengths = free_runs(bm, self.block_counts[p], scratch)
        fits = np.flatnonzero(lengths >= count)
        if not len(fits):
            return -1
        return int(starts[fits[lengths[fits].argmin()]])

    def _set_bits(self, p: int, first: int, count: int, value: int) -> None:
        bm = self._ctl.bitmaps[p]
        if count == 1:
            byte, mask = first >> 3, 1 << (first & 7)
            bm[byte] = (int(bm[byte]) | mask) if value else (int(bm[byte]) & ~mask & 0xFF)
            return
        lo, hi = first >> 3, (first + count + 7) >> 3
        chunk = np.unpackbits(bm[lo:hi], bitorder="little")
        chunk[first - lo * 8:first - lo * 8 + count] = value
        bm[lo:hi] = np.packbits(chunk, bitorder="little")

    def _free_record(self) -> int:
        # The hint is a guess (other processes allocate too), checked before use: usually O(1).
        state = self._ctl.records[:, R.STATE]
        hint = self._record_hint
        if hint < len(state) and state[hint] == _FREE:
            self._record_hint = hint + 1
            return hint
        rec = int(state.argmin())
        if state[rec] != _FREE:
            return -1
        self._record_hint = rec + 1
        return rec

    # ----------------------------------------------------------------- accounting

    def _count_failure(self, *, limit: bool, plan: Sequence[_Fit] = ()) -> None:
        words = self._ctl.words
        words[W.FAIL_COUNT] += 1
        if limit:
            words[W.LIMIT_REFUSALS] += 1
        for _reserve, _bs, p in plan[:1]:
            self._ctl.pools[p][P.FAIL_COUNT] += 1

    def _pool_summary(self) -> list[str]:
        pools = self._ctl.pools
        return [f"{int(pools[p, P.BLOCK_SIZE])} B blocks: {int(pools[p, P.USED_BLOCKS])}/"
                f"{int(pools[p, P.BLOCK_COUNT])} used" for p in range(len(self.block_sizes))
                if int(pools[p, P.PRESENT])]

    def live_allocations(self) -> list[dict[str, int]]:
        """Every live allocation record (for diagnostics); read without the lock. ``lent``: 1 for
        a record lent to the job board (a job's spilled arguments), 0 otherwise."""
        records = self._ctl.records
        out: list[dict[str, int]] = []
        for rec in np.flatnonzero(np.isin(records[:, R.STATE], _HELD)):
            row = [int(v) for v in records[rec]]
            out.append({"record": int(rec), "pool": row[R.POOL], "first_block": row[R.FIRST_BLOCK],
                        "block_count": row[R.BLOCK_COUNT], "nbytes": row[R.NBYTES],
                        "serial": row[R.SERIAL], "owner_pid": row[R.OWNER_PID],
                        "lent": int(row[R.STATE] == _LENT)})
        return out

    def stats(self) -> TableStats:
        """A snapshot of usage and counters, read without the lock (may be a few µs stale)."""
        ctl = self._ctl
        words = ctl.words
        pools = []
        for p, (bs, count) in enumerate(zip(self.block_sizes, self.block_counts)):
            row = ctl.pools[p]
            if not int(row[P.PRESENT]):
                continue
            _starts, lengths = free_runs(ctl.bitmaps[p], count)
            run = int(lengths.max()) if len(lengths) else 0
            pools.append(PoolStats(p, bs, count, int(row[P.USED_BLOCKS]), int(row[P.PEAK_USED]), run,
                                   int(row[P.ALLOC_COUNT]), int(row[P.FAIL_COUNT])))
        return TableStats(
            memory_limit=int(words[W.MEMORY_LIMIT]), used_bytes=int(words[W.USED_BYTES]),
            peak_bytes=int(words[W.PEAK_BYTES]), allocations=int(words[W.ALLOC_COUNT]),
            frees=int(words[W.FREE_COUNT]), failures=int(words[W.FAIL_COUNT]),
            limit_refusals=int(words[W.LIMIT_REFUSALS]), reclaimed=int(words[W.RECLAIMED]),
            live_allocations=int(words[W.LIVE_RECORDS]), lock_recoveries=int(words[W.LOCK_RECOVERIES]),
            pool_growths=int(words[W.POOL_GROWTHS]), backed_bytes=int(words[W.BACKED_BYTES]),
            shm_full_refusals=int(words[W.SHM_FULL]), pools=tuple(pools),
        )
