"""Readers across ``fork()``: the child gets a reader row of its own, holding what it inherited.

A forked child has copies of its parent's Readers, snapshots and contexts, and so of their
mapped generations. The pins that keep those generations from being freed are in the parent's
row: they go when the parent lets go of its contexts, closes its reader or dies (the dead-row
sweep), and the child's own releases would withdraw them under the parent. Both ways a process
reads another generation's bytes. So, for every row this process owns (a :class:`RowPins`, which
outlives its Reader while contexts hold pins):

1. **before fork**, in the forking thread: claim a free row *in the parent's name*, marked with
   a deadline in RD.HANDOVER_NS, and copy the row's pin words into it; the row's pin lock (and
   each Reader's lock) stays held across ``fork()``, so no thread changes what is held between
   the copy and the fork;
2. **after fork, in the parent**: let the locks go. The parent's own row and pins never changed;
3. **after fork, in the child**: under the table lock, check that the claimed row still carries
   the claim (same claimant, same deadline: then it carried the pins without a break) and write
   the child's pid and start token into it. The child's pins are its own from then on: they go
   with the child, and nothing the parent does touches them.

The sweep of dead rows (shmpool/data/readers.py) spares a claimed row until its deadline even
when the claimant died, so a parent that exits right after fork() cannot take the child's pins
with it; and it drops the row after the deadline whoever lives, so a fork that failed, or a
child killed before it ran, leaves nothing behind for longer than HANDOVER_WINDOW.

A child that could not take its row over (the table lock stayed taken for FORK_TIMEOUT, every
row was in use, or the child ran after the deadline) writes nothing into its parent's row, and
its inherited Readers raise :class:`~shmpool.errors.ReaderForked` at their next lookup.

Threads do not cross ``fork()``: each Reader forgets its generation-wait thread in the child and
drops its cached mappings (what the child's objects hold moving into its own row's pin words
first; the copied cache words carry USERS until then), so the child pins only what its own
objects hold; the next lookup maps afresh.
``subprocess`` does not run these hooks (it execs), nor do the spawn and forkserver start
methods: only ``os.fork()`` and the ``fork`` start method of multiprocessing do.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, NamedTuple, Protocol

from ..substrate._log import logger

from ..errors import ReaderForked, ShmPoolError
from ..substrate import _faults
from .readers import HANDOVER_WINDOW, ForkClaim

if TYPE_CHECKING:
    from .pins import RowPins

__all__ = ["track", "FORK_TIMEOUT", "HANDOVER_WINDOW"]

FORK_TIMEOUT = 5.0  # seconds fork() waits for a lock of ours before forking without a hand-over


class ForkAware(Protocol):
    """A Reader's side of the hand-over (its lock, its threads, its cached mappings)."""

    def _fork_prepare(self, timeout: float) -> bool: ...

    def _fork_parent(self) -> None: ...

    def _fork_child(self) -> None: ...


class _Prepared(NamedTuple):
    rows: "RowPins"
    claim: ForkClaim | None
    error: ShmPoolError | None


_readers: "weakref.WeakSet[ForkAware]" = weakref.WeakSet()
_rows: "weakref.WeakSet[RowPins]" = weakref.WeakSet()
_forking = threading.Lock()  # two threads forking at once would interleave their hand-overs
_pending: tuple[list[ForkAware], list[_Prepared], int] | None = None
_gc_was_enabled = True


def track(reader: ForkAware, rows: "RowPins") -> None:
    """Hand ``rows`` (and reset ``reader``) over to every child this process forks."""
    _readers.add(reader)
    _rows.add(rows)


def _before() -> None:
    global _pending, _gc_was_enabled
    if not _rows:
        return  # a process without readers pays one set-emptiness test per fork
    _forking.acquire()
    # No collection between the pin copy and the fork: a finalizer run by it in this thread
    # (the pin lock is reentrant) would withdraw a pin after the copy, and the child's row would
    # keep a pin its process does not know it holds.
    _gc_was_enabled = gc.isenabled()
    gc.disable()
    locked: list[ForkAware] = []
    prepared: list[_Prepared] = []
    _pending = (locked, prepared, os.getpid())  # filled as we go: the after-hooks undo what was done
    for reader in list(_readers):
        if reader._fork_prepare(FORK_TIMEOUT):
            locked.append(reader)
    for rows in list(_rows):
        try:
            claim, error = rows.fork_prepare(FORK_TIMEOUT), None
        except Exception as exc:  # LockTimeout, no free row, ...: fork anyway, the child is told
            claim, error = None, ShmPoolError(str(exc)) if not isinstance(exc, ShmPoolError) else exc
            logger.warning("reader row {} could not be claimed for a child about to fork: {}", rows.slot, exc)
        prepared.append(_Prepared(rows, claim, error))


def _after_in_parent() -> None:
    global _pending
    if _pending is None:
        return
    locked, prepared, _ = _pending
    _pending = None
    for p in prepared:
        if p.claim is not None:
            p.rows.fork_parent()
    for reader in locked:
        reader._fork_parent()
    if _gc_was_enabled:
        gc.enable()
    _forking.release()


def _after_in_child() -> None:
    global _pending, _forking
    _forking = threading.Lock()
    if _faults.ARMED:
        _faults.point("fork.child")  # tests stop a child here: late, or with its parent killed
    if _pending is None:
        if _rows:  # made by another thread while this one forked: nothing was claimed for them
            _orphan_all(list(_rows), set(), os.getppid(), "the reader was created while this process forked")
        return
    _locked, prepared, parent = _pending
    _pending = None
    if _gc_was_enabled:
        gc.enable()
    done = set()
    for p in prepared:
        done.add(id(p.rows))
        if p.claim is None:
            if not p.rows.released:
                _orphan(p.rows, parent, f"no row could be claimed for it at fork ({p.error})")
            continue
        remaining = max(0.0, p.claim.deadline_ns / 1e9 - time.time())
        try:
            ok = p.rows.fork_child(p.claim, remaining)
            reason = "the row claimed for it was dropped before it ran (it ran too late)"
        except ShmPoolError as exc:
            ok, reason = False, f"it could not take its row over ({exc})"
        if not ok:
            _orphan(p.rows, parent, reason)
    _orphan_all(list(_rows), done, parent, "the reader was created while this process forked")
    for reader in list(_readers):
        reader._fork_child()


def _orphan_all(rows: "list[RowPins]", done: set[int], parent: int, reason: str) -> None:
    for r in rows:
        if id(r) not in done and not r.released:
            _orphan(r, parent, reason)


def _orphan(rows: "RowPins", parent: int, reason: str) -> None:
    error = ReaderForked(name=rows.instance, pid=os.getpid(), parent_pid=parent, reason=reason)
    rows.orphan(error)
    logger.error("{}", error)


os.register_at_fork(before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child)
