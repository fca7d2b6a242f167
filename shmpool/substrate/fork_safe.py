"""A module-level lock that a forked child gets afresh.

fork() copies a lock in the state it is in, and the thread that held it is not in the child:
a copy held at the fork stays held for ever, and the child's first use of it hangs. So every
ForkSafeLock is made anew in the child (``os.register_at_fork``): the modules' own locks (the
lazy loguru hook, the last-resort warnings, the exit clean-up, shmpool.dask's readers and pinned
files) were each found hanging a child this way (tests/test_fork_module_locks.py). The parent's
state is the parent's: nothing the lock guarded is shared with the child through it.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["ForkSafeLock"]


class ForkSafeLock:
    """``threading.Lock`` (``with``, ``acquire``, ``release``), made afresh in a forked child."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _every.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> "ForkSafeLock":
        self._lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


_every: "weakref.WeakSet[ForkSafeLock]" = weakref.WeakSet()


def _renew_after_fork() -> None:
    for lock in list(_every):
        lock._lock = threading.Lock()


os.register_at_fork(after_in_child=_renew_after_fork)
