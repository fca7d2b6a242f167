"""The cross-process mutex of a shared segment: a robust pthread mutex living in the segment.

The control segment (allocation table, reader registry) and the jobs segment each hold one, in
words 56-63 (``W.LOCK_MUTEX``, ``JW.LOCK_MUTEX``), made by the segment's creator. It is
``shmpool._core.RobustMutex`` (docs/architecture.md, "The compiled core"):

- The kernel keeps every holder's robust list, so a holder that dies at *any* instruction hands
  the mutex to the next locker with EOWNERDEAD. That locker marks it consistent and runs the
  segment owner's ``on_recover(dead_pid)`` hook (the table's dead-owner reclaim, the board's heal)
  before its own critical section.
- Every caller's timeout is honoured (``pthread_mutex_clocklock`` on CLOCK_MONOTONIC); one that
  expires raises LockTimeout naming the holder's pid, which the holder records in word 0 right
  after locking. A SIGSTOPped holder is alive, so only a timeout can get past it.
- Uncontended, a lock round is a compare-and-swap each way (measured ~0.15 µs from Python,
  against ~3 µs for the two flock calls and four word stores it replaces).

It replaced an ``flock`` on a file in the runtime folder plus a POSIX semaphore that woke
contended waiters (an flock has no timed wait), which the C core made unnecessary.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

from .._core import RobustMutex, SharedWords
from .layout import W

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["SharedLock", "shared_lock", "retry_interrupted_waits", "interrupted_waits_retry"]

SharedLock = RobustMutex  # the type the allocation table, the reader registry and the board hold

_retry_signals = False


def shared_lock(buffer: "Buffer", words_offset: int, *, name: str, role: str,
                on_recover: Callable[[int], None] | None = None, create: bool = False) -> RobustMutex:
    """The mutex in the words section at ``words_offset`` of a mapped segment ``buffer``.

    ``create``: make it (the segment's creator, before any other process can attach). ``role``
    names the fault point ``lock.held.<role>`` that tests arm (shmpool.substrate._faults)."""
    words = SharedWords(buffer, words_offset, int(W.LOCK_MUTEX) + 8)
    lock = RobustMutex(words, int(W.LOCK_MUTEX), int(W.LOCK_OWNER_PID), int(W.LOCK_RECOVERIES), name,
                       on_recover, role)
    if create:
        lock.initialize()
    return lock


def retry_interrupted_waits(enabled: bool = True) -> None:
    """Declare that this process's signal handlers only set flags (a worker's do), so a wait a
    signal interrupts is resumed instead of failing with posix_ipc.SignalError.

    Concerns the posix_ipc semaphore waits that remain (a reader's generation wake-up); the
    core's futex and mutex waits always resume after a handler that returns (PEP 475) and end
    with whatever a handler raises (KeyboardInterrupt)."""
    global _retry_signals
    _retry_signals = enabled


def interrupted_waits_retry() -> bool:
    return _retry_signals or threading.current_thread() is not threading.main_thread()
