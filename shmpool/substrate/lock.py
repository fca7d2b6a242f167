"""A cross-process mutex that the kernel releases when its holder dies, at any instruction.

The lock itself is an ``flock`` on a 0600 file in the runtime folder: the kernel drops it when
the holding process dies, so there is no window (not even between acquiring and recording who
holds it) in which a SIGKILL can wedge everyone else. An earlier design used a POSIX semaphore
as the mutex and recorded the holder's pid after ``sem_wait``; a holder killed between the two
left a taken semaphore with no owner, and everyone stalled for a 2 s grace period before a
takeover (issue 11). Ownership in the kernel removes the takeover protocol altogether.

A semaphore stays, as the *wake-up* of contended waiters only (flock has no timed wait): a waiter
sets ``LOCK_WAITING``, retries, then sleeps on the semaphore for a slice; the releaser posts it
when the flag is set. A lost post (a releaser killed right after unlocking) costs a waiter one
slice, never the lock.

The holder also records its pid and start token in shared words, for two reasons: a waiter that
times out names the holder (``LockTimeout.owner_pid``), and the next holder knows the previous
one died inside its critical section (a clean release clears the pid *before* unlocking), in
which case the owner's ``on_recover`` hook repairs whatever was left half done.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from typing import Any, Callable

import posix_ipc
from loguru import logger

from . import _faults
from ._proc import my_identity
from ..errors import AttachError, LockTimeout
from .layout import W

__all__ = ["SharedLock", "retry_interrupted_waits", "interrupted_waits_retry"]

_EX_NB = fcntl.LOCK_EX | fcntl.LOCK_NB
SLICE = 0.05          # seconds a contended waiter sleeps before retrying on its own
SPIN = 50e-6          # seconds of busy retry before sleeping: critical sections last microseconds

_live_locks: "weakref.WeakSet[SharedLock]" = weakref.WeakSet()
_retry_signals = False


def retry_interrupted_waits(enabled: bool = True) -> None:
    """Declare that this process's signal handlers only set flags (a worker's do), so a wait a
    signal interrupts is resumed instead of failing with posix_ipc.SignalError.

    Off by default because posix_ipc reports an interrupted wait as SignalError and drops
    whatever the handler raised (KeyboardInterrupt included): resuming there would make Ctrl-C
    unable to interrupt a waiting main thread. Other threads always resume (PEP 475 style).
    """
    global _retry_signals
    _retry_signals = enabled


def interrupted_waits_retry() -> bool:
    return _retry_signals or threading.current_thread() is not threading.main_thread()


def _after_fork_in_child() -> None:
    # A forked child shares the parent's open file descriptions, and an flock belongs to the
    # description: it must not unlock (or keep alive) its parent's hold. It reopens on first use.
    for lock in list(_live_locks):
        lock._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SharedLock:
    """Mutex over one shared segment's structures; ``with lock:`` or ``acquire(timeout)``.

    Threads of one process queue on a thread lock first; processes then contend for the flock.
    ``acquire`` raises LockTimeout (naming the holder's pid) once ``timeout`` has passed.
    """

    def __init__(self, sem: posix_ipc.Semaphore, words: Any, path: str, name: str,
                 on_recover: Callable[[int], object] | None = None, *, role: str = "table") -> None:
        self._sem = sem
        # Plain int indices for a flat int64 memoryview (or numpy array) of the lock words.
        self._pid_i, self._start_i, self._wait_i, self._rec_i = (int(i) for i in (
            W.LOCK_OWNER_PID, W.LOCK_OWNER_START, W.LOCK_WAITING, W.LOCK_RECOVERIES))
        self._held_point = f"lock.held.{role}"  # the fault point tests arm (shmpool.substrate._faults)
        self._words = words
        self._path = path
        self.name = name
        self.on_recover = on_recover
        # posix_ipc and fcntl drop the GIL even for non-blocking calls, so a thread that won the
        # cross-process lock could otherwise sit on it for a GIL switch interval (5 ms) while
        # its siblings spin; measured with 128 client threads: 7.5k -> 11.5k jobs/s.
        self._local = threading.Lock()
        self._fd: int | None = None
        self._fd_closer: weakref.finalize[[int], SharedLock] | None = None
        self._fd_lock = threading.Lock()
        _live_locks.add(self)

    # ----------------------------------------------------------------- file

    def _open(self) -> int:
        with self._fd_lock:
            if self._fd is None:
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                st = os.fstat(fd)
                if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                    os.close(fd)
                    raise AttachError(name=self.name, reason=(
                        f"lock file {self._path} is owned by uid {st.st_uid} with mode "
                        f"{st.st_mode & 0o777:o}; it must be ours with mode 600"))
                self._fd = fd
                self._fd_closer = weakref.finalize(self, os.close, fd)
            return self._fd

    def close(self) -> None:
        """Close the lock file (idempotent). Refused while a thread of ours holds the lock:
        closing the descriptor would release the flock under that thread's critical section."""
        if self._local.locked():
            logger.debug("lock {} still held here: its file stays open until the process ends", self.name)
            return
        with self._fd_lock:
            closer, self._fd, self._fd_closer = self._fd_closer, None, None
        if closer is not None:
            closer()

    def _forget_after_fork(self) -> None:
        # Closing one duplicate never releases the parent's flock; an explicit unlock would.
        self._local = threading.Lock()
        self._fd_lock = threading.Lock()
        self.close()

    # ----------------------------------------------------------------- acquire / release

    def acquire(self, timeout: float | None = None) -> None:
        """Block until held; LockTimeout if it is still held by someone after ``timeout`` s."""
        # The uncontended path is three calls into C and four word stores (~2 µs with the two
        # flock syscalls of a round): the clock is read only when we have to wait.
        local = self._local
        deadline = None
        if not local.acquire(False):
            if timeout is not None:
                deadline = time.monotonic() + timeout
            if not local.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
                raise LockTimeout(lock=self.name, owner_pid=self.owner(), waited=timeout)
        try:
            fd = self._fd if self._fd is not None else self._open()
            try:
                fcntl.flock(fd, _EX_NB)
            except BlockingIOError:
                if deadline is None and timeout is not None:
                    deadline = time.monotonic() + timeout
                self._acquire_slow(fd, deadline)
            words = self._words
            if words[self._pid_i] or _faults.ARMED:
                self._enter()
            else:
                me, token = my_identity()
                words[self._start_i] = token
                words[self._pid_i] = me
        except BaseException:
            local.release()
            raise

    def _acquire_slow(self, fd: int, deadline: float | None) -> None:
        started = time.monotonic()
        spin_until = time.perf_counter() + SPIN
        while time.perf_counter() < spin_until:
            try:
                fcntl.flock(fd, _EX_NB)
                return
            except BlockingIOError:
                continue
        words = self._words
        while True:
            # Flag first, then retry: a releaser that unlocked after our failed retry reads the
            # flag after we set it, so it posts and we wake (no lost wake-up between the two).
            # The flag stays set while we hold the lock, so our own release wakes the next
            # sleeper: conservative, at the cost of one spurious post per contended episode.
            words[self._wait_i] = 1
            try:
                fcntl.flock(fd, _EX_NB)
                return
            except BlockingIOError:
                pass
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise LockTimeout(lock=self.name, owner_pid=self.owner(), waited=now - started)
            wait = SLICE if deadline is None else min(SLICE, deadline - now)
            try:
                self._sem.acquire(wait)
            except posix_ipc.BusyError:
                pass
            except posix_ipc.SignalError:
                if not interrupted_waits_retry():
                    raise

    def _enter(self) -> None:
        words = self._words
        dead = int(words[self._pid_i])
        me, token = my_identity()
        words[self._start_i] = token
        words[self._pid_i] = me
        if dead:
            # A clean release clears the pid before unlocking, so a pid left here belongs to a
            # holder that died inside its critical section: the kernel freed the flock for it.
            words[self._rec_i] += 1
            logger.warning("lock {} recovered: holder pid {} died inside its critical section", self.name, dead)
            if self.on_recover is not None:
                try:
                    self.on_recover(dead)
                except BaseException:
                    # Leave the dead holder's pid behind, so the next holder repairs again
                    # instead of trusting half-repaired structures.
                    self._release_shared(leave_pid=dead)
                    raise
        if _faults.ARMED:
            _faults.point(self._held_point)

    def release(self) -> None:
        self._release_shared()
        self._local.release()

    def _release_shared(self, leave_pid: int = 0) -> None:
        words = self._words
        words[self._pid_i] = leave_pid
        words[self._start_i] = 0
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        if words[self._wait_i]:
            words[self._wait_i] = 0
            self._sem.release()

    def __enter__(self) -> "SharedLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def owner(self) -> int:
        """Pid recorded by the current holder (0: free, or taken a few instructions ago)."""
        return int(self._words[self._pid_i])
