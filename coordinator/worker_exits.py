"""Worker deaths as events: a pidfd per worker, one thread blocked in poll() on all of them.

The reaper used to find a dead worker by polling every worker every 20 ms, which is what kept
an idle coordinator awake 50 times a second. A pidfd (Linux 5.3, ``os.pidfd_open``) becomes
readable the moment its process exits, zombie or not, so one thread sleeping in ``poll()`` on
every worker's pidfd learns of a death at once and costs nothing until then; it posts the
coordinator's wake semaphore, and the reaper's next round (run right away) handles the death
exactly as before (``WorkerPool.supervise`` still reaps and decides, this module only wakes).

Rejected: SIGCHLD. Python runs signal handlers in the main thread only, and the coordinator is
a library inside the user's program, whose main thread and signal dispositions are not ours.
Rejected: ``waitid(WNOWAIT)`` per worker, one thread each (a thread per worker on a 64-core
host, and no way to end a thread blocked in it).

Where pidfds are missing (macOS, a kernel before 5.3, a seccomp filter that refuses the call),
:attr:`ExitWatch.reliable` is False and the reaper keeps polling every round, as before.
"""

from __future__ import annotations

import os
import select
import threading
import weakref
from typing import Callable

from shmpool.substrate._log import logger

__all__ = ["ExitWatch"]

_STOP = b"s"   # written to the thread's pipe by close()
_MORE = b"m"   # written by watch(): new pidfds to register


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError as exc:
            logger.debug("closing a worker exit watch descriptor failed: {}", exc)


class ExitWatch:
    """Calls ``wake()`` from its own thread when a process given to :meth:`watch` exits.

    It owns its pipe and one pidfd per watched process (a pidfd is closed once its process
    exited and ``wake`` was called); ``close()`` (idempotent) ends the thread and closes them.
    """

    def __init__(self, name: str, wake: Callable[[], None]) -> None:
        self.name = name
        self._wake = wake
        self.reliable = hasattr(os, "pidfd_open") and hasattr(select, "poll")
        self._lock = threading.Lock()
        self._new: list[int] = []        # pidfds handed over by watch(), not registered yet
        self._owned: list[int] = []      # every descriptor this object still has to close
        self._closed = False
        self._thread: threading.Thread | None = None
        if not self.reliable:
            return
        self._read, self._write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._owned += [self._read, self._write]
        self._finalizer = weakref.finalize(self, _close_all, self._owned)
        self._thread = threading.Thread(target=self._run, name=f"shmpool-{name}-exits", daemon=True)
        self._thread.start()

    def watch(self, pid: int) -> None:
        """Watch child ``pid`` (not reaped yet: its pid cannot have been reused)."""
        if not self.reliable or self._closed:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError as exc:  # ENOSYS or a seccomp EPERM: polling it is, for every worker from now on
            logger.info("worker exits of {!r} are polled every round: pidfd_open failed ({})", self.name, exc)
            self.reliable = False
            return
        with self._lock:
            self._owned.append(fd)
            self._new.append(fd)
        self._poke(_MORE)

    def _poke(self, what: bytes) -> None:
        try:
            os.write(self._write, what)
        except BlockingIOError:
            pass  # the pipe is full of pokes: the thread is due to look anyway

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._read, select.POLLIN)
        while True:
            with self._lock:
                new, self._new = self._new, []
            for fd in new:
                poller.register(fd, select.POLLIN)
            try:
                ready = poller.poll()
            except OSError as exc:  # EINTR is retried by Python; anything else ends the watch
                logger.error("worker exit watch of {!r} failed ({}); exits are polled from now on", self.name, exc)
                self.reliable = False
                self._wake()
                return
            exited = [fd for fd, _ in ready if fd != self._read]
            if any(fd == self._read for fd, _ in ready) and _STOP in self._drain():
                return
            for fd in exited:
                poller.unregister(fd)  # an exited process's pidfd stays readable: once is enough
                self._forget(fd)
            if exited:
                try:
                    self._wake()
                except Exception:  # the coordinator is stopping: its next round, if any, looks anyway
                    logger.opt(exception=True).debug("waking the reaper of {!r} after a worker exit failed", self.name)

    def _drain(self) -> bytes:
        got = b""
        while True:
            try:
                chunk = os.read(self._read, 4096)
            except BlockingIOError:
                return got
            if not chunk:
                return got
            got += chunk

    def _forget(self, fd: int) -> None:
        with self._lock:
            if fd in self._owned:
                self._owned.remove(fd)
        _close_all([fd])

    def close(self) -> None:
        """End the thread and close every descriptor (idempotent); ``wake`` is not called after."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        self._poke(_STOP)
        self._thread.join(5.0)
        if self._thread.is_alive():  # cannot happen short of a stopped process; leave it its fds
            logger.warning("worker exit watch thread of {!r} did not end", self.name)
            return
        self._finalizer()
