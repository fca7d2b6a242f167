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
from .pins import busy_only, entries_used, pinned_rows, row_caches

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


# Reader rows a page holds (READER_COLS int64 words each): the free-row search reads a page at
# a time, so a reader maps the pages up to its own row, not all 512 rows' 8 pages.
_ROWS_PER_PAGE = 4096 // (READER_COLS * 8)


def _first_free(rows: np.ndarray) -> int | None:
    """The lowest free reader row (PID 0), or None."""
    for start in range(0, len(rows), _ROWS_PER_PAGE):
        free = np.flatnonzero(rows[start:start + _ROWS_PER_PAGE, RD.PID] == 0)
        if len(free):
            return start + int(free[0])
    return None


class ReaderRegistry:
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
            slot = self._free_row_locked()
            rows = ctl.readers
            # Nothing superseded before it attached can be held by it: it has answered those.
            self._fill_locked(slot, start, int(ctl.words[W.PIN_EPOCH]))
            rows[slot, RD.PID] = pid
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
            slot = self._free_row_locked()
            rows = ctl.readers
            # The child holds what the parent held: it has answered what the parent answered.
            self._fill_locked(slot, start, int(rows[parent_slot, RD.EPOCH_SEEN]))
            rows[slot, RD.HANDOVER_NS] = deadline_ns
            rows[slot, RD.PID] = pid
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

    def _free_row_locked(self) -> int:
        rows = self._ctl.readers
        slot = _first_free(rows)
        if slot is None:
            self._reap_dead_locked()
            slot = _first_free(rows)
            if slot is None:
                raise AttachError(name=self._instance,
                                  reason=f"all {len(rows)} reader slots are taken by live processes")
        return slot

    def _fill_locked(self, slot: int, start: int, epoch_seen: int) -> None:
        """Every column of a free row but PID, which the caller stores last (PID != 0 is "taken")."""
        ctl = self._ctl
        rows = ctl.readers
        # The row's pin words are all zero already: every way a row is given back clears them
        # (_clear_locked) before its PID. Not written here, because a reader should map only the
        # page of its 10 kB of pin words that holds the entries it uses (~1 kB for 25): zeroing
        # them all made every reader map ~3 pages that no other reader shares, ~12 kB of PSS
        # each (docs/performance.md, issue 22). Garbage there could only over-pin.
        rows[slot, :] = 0
        rows[slot, RD.START] = start
        rows[slot, RD.ATTACHED_NS] = time.time_ns()
        rows[slot, RD.EPOCH_SEEN] = epoch_seen
        rows[slot, RD.SEEN_NS] = time.time_ns()
        attached = int(ctl.words[W.READERS_ATTACHED]) + 1
        ctl.words[W.READERS_ATTACHED] = attached
        ctl.words[W.READERS_PEAK] = max(attached, int(ctl.words[W.READERS_PEAK]))

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
        rows = self._ctl.readers
        rows[slot, RD.SEEN_NS] = time.time_ns()
        rows[slot, RD.EPOCH_SEEN] = epoch

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
        for slot in np.flatnonzero(ctl.readers[:, RD.PID]):
            used = entries_used(ctl)
            pins, caches = ctl.pins[slot, :used], row_caches(ctl, int(slot), used)
            out.append({
                "slot": int(slot), "pid": int(ctl.readers[slot, RD.PID]),
                "attached_ns": int(ctl.readers[slot, RD.ATTACHED_NS]),
                "epoch_seen": int(ctl.readers[slot, RD.EPOCH_SEEN]),
                "handover_ns": int(ctl.readers[slot, RD.HANDOVER_NS]),
                "pins": {int(e): [int(w) for w in pins[e]] + [int(caches[e])]
                         for e in np.flatnonzero(pins.any(axis=1) | (caches != 0))},
            })
        return out
