"""Attached readers and the generations they pin.

Each reader process claims a row (pid, start token) and owns the pin words of that row: per
directory entry, the exact generations it holds views into (shmpool/data/pins.py). The coordinator
frees a superseded region only when no live reader pins that generation, and drops the rows (and
pins) of readers whose process died, so a crashed reader cannot leak memory.

Claiming and releasing a row take the table lock (rare); pin updates are single int64 stores
by the row's owner and need none (the cache words too, shmpool/_core/_lookup.pyx). So do the
row's EPOCH_SEEN and SEEN_NS, which say when the reader's lookups last let go of superseded
mappings (at its first lookup after a publication).

A row can also be claimed by a process that is about to fork, in its own name, for the child
(:meth:`ReaderRegistry.claim_for_fork`; the protocol is in shmpool/data/fork.py): RD.HANDOVER_NS
holds the hand-over's deadline, the sweep spares the row until then even if the claimant died,
and drops it after then whoever lives.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
from ..substrate._log import logger

from ..substrate._proc import is_alive, my_identity
from ..errors import AttachError, LockTimeout
from ..substrate.layout import READER_COLS, RD, W, Control, cache_blocks
from ..substrate.lock import SharedLock
from .pins import busy_only, entries_used, pinned_rows, row_in_use

__all__ = ["ReaderRegistry", "ForkClaim", "HANDOVER_WINDOW"]

HANDOVER_WINDOW = 30.0  # seconds a forked child has to take over the row claimed for it
# Seconds close() waits for the table lock to give its row back. Held longer, its holder is
# stopped or wedged: the row (holding no pins by then) is left to the sweep, which drops it
# once this process exits, rather than close() waiting as long as the holder stays stopped.
RELEASE_TIMEOUT = 2.0


class ForkClaim(NamedTuple):
    """A row claimed in the forking process's name for its child (see shmpool/data/fork.py)."""
    slot: int
    pid: int           # the claimant (the parent)
    start: int
    deadline_ns: int   # RD.HANDOVER_NS: after it, the sweep drops the row whoever lives


class ReaderRegistry:
    # Slots, no __dict__: one object per reader, ~200 B less of its private memory each
    # (docs/performance.md, issue 22).
    __slots__ = ("_ctl", "_lock", "_instance")

    def __init__(self, control: Control, lock: SharedLock, instance: str) -> None:
        self._ctl = control
        self._lock = lock
        self._instance = instance

    @property
    def instance(self) -> str:
        return self._instance

    def register(self, timeout: float | None = None) -> int:
        """Claim a reader row for this process; returns its index.

        Raises LockTimeout (naming the holder) if the table lock stays held for ``timeout``
        seconds (None: wait for ever), AttachError if every row is taken by a live process."""
        ctl = self._ctl
        pid, start = my_identity()
        self._lock.acquire(timeout)
        try:
            with ctl.readers_view() as rows:
                slot = self._free_row_locked(rows)
                # Nothing superseded before it attached can be held by it: it has answered those.
                self._fill_locked(rows, slot, start, ctl.words_mv[W.PIN_EPOCH])
                rows[slot * READER_COLS + RD.PID] = pid
        finally:
            self._lock.release()
        return slot

    def claim_for_fork(self, parent_slot: int, timeout: float | None) -> ForkClaim:
        """Claim a row in this process's name for a child it is about to fork.

        The row counts as this process's until the child takes it over (:meth:`take_over`) or
        its deadline passes; the caller copies its pins into it. Raises as :meth:`register`."""
        ctl = self._ctl
        pid, start = my_identity()
        deadline_ns = time.time_ns() + int(HANDOVER_WINDOW * 1e9)
        self._lock.acquire(timeout)
        try:
            with ctl.readers_view() as rows:
                slot = self._free_row_locked(rows)
                # The child holds what the parent held: it has answered what the parent answered.
                self._fill_locked(rows, slot, start, rows[parent_slot * READER_COLS + RD.EPOCH_SEEN])
                rows[slot * READER_COLS + RD.HANDOVER_NS] = deadline_ns
                rows[slot * READER_COLS + RD.PID] = pid
        finally:
            self._lock.release()
        return ForkClaim(slot, pid, start, deadline_ns)

    def take_over(self, claim: ForkClaim, timeout: float | None) -> bool:
        """In the forked child: make the row claimed for it its own; False if it is gone.

        Under the lock, which the sweep takes too: if the row still carries the claim, it has
        carried it (and its pins) without a break since the parent claimed it."""
        rows = self._ctl.readers
        pid, start = my_identity()
        self._lock.acquire(timeout)
        try:
            row = rows[claim.slot]
            if (int(row[RD.PID]), int(row[RD.START]), int(row[RD.HANDOVER_NS])) != (
                    claim.pid, claim.start, claim.deadline_ns):
                return False
            row[RD.START] = start
            row[RD.ATTACHED_NS] = time.time_ns()
            row[RD.WAITING] = 0
            row[RD.PID] = pid
            row[RD.HANDOVER_NS] = 0
            return True
        finally:
            self._lock.release()

    def _free_row_locked(self, rows: memoryview) -> int:
        free = self._first_free_locked(rows)
        if free is None:
            self._reap_dead_locked()
            free = self._first_free_locked(rows)
            if free is None:
                raise AttachError(name=self._instance, reason=f"all {self._ctl.layout.max_readers} reader slots "
                                                              "are taken by live processes")
        return free

    def _first_free_locked(self, rows: memoryview) -> int | None:
        # Through a memoryview of the rows (Control.readers_view), not numpy: attach makes no
        # numpy object (issue 22). Row by row, so a reader maps the pages up to its own row,
        # not all 512 rows' 8 pages (readers of one instance share those).
        for slot in range(self._ctl.layout.max_readers):
            if rows[slot * READER_COLS + RD.PID] == 0:
                return slot
        return None

    def _fill_locked(self, rows: memoryview, slot: int, start: int, epoch_seen: int) -> None:
        """Every column of a free row of ``rows`` (Control.readers_view) but PID, which the
        caller stores last (PID != 0 is "taken")."""
        base, words = slot * READER_COLS, self._ctl.words_mv
        # The row's pin and cache words are all zero already: every way a row is given back
        # clears them (_clear_locked) before its PID. Not written here, because a reader should
        # map only the lines of the entries it uses, on pages it shares with other readers
        # (layout 11): writing its whole row would map a page per entry (docs/shm-layout.md,
        # issue 22). Garbage there could only over-pin.
        for col in range(READER_COLS):
            rows[base + col] = 0
        rows[base + RD.START] = start
        rows[base + RD.ATTACHED_NS] = time.time_ns()
        rows[base + RD.EPOCH_SEEN] = epoch_seen
        rows[base + RD.SEEN_NS] = time.time_ns()
        attached = words[W.READERS_ATTACHED] + 1
        words[W.READERS_ATTACHED] = attached
        words[W.READERS_PEAK] = max(attached, words[W.READERS_PEAK])

    def unregister(self, slot: int) -> None:
        """Give this process's row back; a row that is not (or no longer) ours is left alone."""
        if self._ctl.readers is None:
            # The instance was closed by its owner first (the coordinator's own reader, whose
            # contexts outlived stop()): the row went with the instance.
            logger.debug("reader slot {} of {!r}: instance already closed", slot, self._instance)
            return
        pid, start = my_identity()
        try:
            self._lock.acquire(RELEASE_TIMEOUT)
        except LockTimeout as exc:
            logger.warning("reader slot {} of {!r} not given back ({}); the coordinator drops it when this "
                           "process exits", slot, self._instance, exc)
            return
        try:
            row = self._ctl.readers[slot]
            if (int(row[RD.PID]), int(row[RD.START])) != (pid, start):
                # Swept as dead, or a row this process inherited through fork: never clear
                # another process's row (its pins keep its contexts' bytes).
                logger.debug("reader slot {} of {!r} is not this process's any more (pid {}); left alone",
                             slot, self._instance, int(row[RD.PID]))
                return
            self._clear_locked(slot)
        finally:
            self._lock.release()

    def _clear_locked(self, slot: int) -> None:
        ctl = self._ctl
        if int(ctl.readers[slot, RD.PID]) == 0:
            return
        used = entries_used(ctl)
        ctl.pins[slot, :used] = 0
        ctl.caches[slot, :cache_blocks(used)] = 0
        ctl.readers[slot, :] = 0
        ctl.words[W.READERS_ATTACHED] -= 1

    def acknowledge(self, slot: int, epoch: int) -> None:
        """Record that this reader let go of everything superseded up to PIN_EPOCH ``epoch``."""
        base = slot * READER_COLS
        with self._ctl.readers_view() as rows:  # made per publication honoured, not kept (issue 22)
            rows[base + RD.SEEN_NS] = time.time_ns()
            rows[base + RD.EPOCH_SEEN] = epoch

    def reap_dead(self) -> list[int]:
        """Drop the rows and pins of dead reader processes, and fork hand-overs past their
        deadline; returns their pids."""
        rows = self._ctl.readers
        if not any(self._droppable(rows[s], time.time_ns()) for s in np.flatnonzero(rows[:, RD.PID])):
            return []
        with self._lock:
            return self._reap_dead_locked()

    @staticmethod
    def _droppable(row: np.ndarray, now_ns: int) -> bool:
        handover = int(row[RD.HANDOVER_NS])
        if handover:
            # Claimed for a forked child: spared while the child may still take it over, even if
            # the claimant (its parent) died; after the deadline no child will, whoever lives.
            return now_ns > handover
        return not is_alive(int(row[RD.PID]), int(row[RD.START]))

    def _reap_dead_locked(self) -> list[int]:
        rows = self._ctl.readers
        dead: list[int] = []
        unclaimed: list[int] = []
        now_ns = time.time_ns()
        for slot in np.flatnonzero(rows[:, RD.PID]):
            row = rows[slot]
            if self._droppable(row, now_ns):
                (unclaimed if row[RD.HANDOVER_NS] else dead).append(int(row[RD.PID]))
                self._clear_locked(int(slot))
        if dead:
            logger.info("dropped reader slots (and their pins) of dead processes {}", dead)
        if unclaimed:
            logger.info("dropped reader slots claimed at fork by {} that no child took over", unclaimed)
        return dead + unclaimed

    def holders(self, entry: int, generation: int) -> list[tuple[int, int, bool]]:
        """(slot, pid, held by an object) of every attached reader that pins ``generation`` of
        ``entry``; False: only by a lookup in progress (a stopped or descheduled process)."""
        rows = self._ctl.readers
        return [(int(s), int(rows[s, RD.PID]), not busy_only(self._ctl, int(s), entry, generation))
                for s in pinned_rows(self._ctl, entry, generation)]

    def is_pinned(self, entry: int, generation: int) -> bool:
        """True if some attached reader holds ``generation`` of ``entry``."""
        return len(pinned_rows(self._ctl, entry, generation)) > 0

    def live(self) -> list[dict[str, Any]]:
        ctl = self._ctl
        out: list[dict[str, Any]] = []
        used = entries_used(ctl)
        for slot in np.flatnonzero(ctl.readers[:, RD.PID]):
            pins, caches, entries = row_in_use(ctl, int(slot), used)
            out.append({
                "slot": int(slot), "pid": int(ctl.readers[slot, RD.PID]),
                "attached_ns": int(ctl.readers[slot, RD.ATTACHED_NS]),
                "epoch_seen": int(ctl.readers[slot, RD.EPOCH_SEEN]),
                "handover_ns": int(ctl.readers[slot, RD.HANDOVER_NS]),
                "pins": {int(e): [int(w) for w in pins[e]] + [int(caches[e])] for e in entries},
            })
        return out
