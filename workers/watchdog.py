"""A worker's watchdog: the worker process ends within a second of its coordinator's death.

The job loop notices a dead coordinator only between jobs (its semaphore wait times out every
0.2 s). A job that runs for minutes would keep an orphaned worker alive, mapped and holding its
share of the dead instance's memory, for as long as the job lasts, and a job that never ends
would keep it for ever. So a daemon thread waits on a pidfd of the coordinator (its identity,
pid *and* start token, checked once the pidfd is open, so a recycled pid does not count as
alive), or where the kernel gives none checks that identity every ``CHECK_INTERVAL`` seconds,
and once it is gone ends the whole process at once with ``os._exit(EXIT_COORDINATOR_GONE)``, killing the
job mid-way. There is nobody left to deliver its result to: clients of the instance see
AttachError, and ``shmpool cleanup NAME`` (or the next coordinator) removes the names.

``os._exit`` rather than an exception or a signal: the job runs user code on the main thread,
which may catch anything or block in a C call; ending the process is the only thing a thread
can do that the job cannot delay. Nothing needs flushing: the worker's state lives in shared
memory of an instance that is already dead.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time

from shmpool.substrate._proc import is_alive

__all__ = ["EXIT_COORDINATOR_GONE", "CHECK_INTERVAL", "start_watchdog"]

# The worker's exit status when its watchdog ended it (documented in docs/operations.md). The
# other statuses of a worker: 0 after a normal stop, 3 when it could not attach, 1 for an
# uncaught exception.
EXIT_COORDINATOR_GONE = 4
# Seconds between checks: one read of /proc/PID/stat, a few microseconds. The worker is gone
# within this plus process teardown of the coordinator's death.
CHECK_INTERVAL = 0.25


def _coordinator_pidfd(pid: int, start_token: int) -> int | None:
    """A pidfd of the coordinator, or None where the kernel or a sandbox refuses one. Opened,
    then the identity checked: a pid recycled before the open is another process, and then the
    coordinator is gone (-1)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # before Linux 5.3, or a seccomp filter
        return None
    if not is_alive(pid, start_token):
        os.close(fd)
        return -1
    return fd


def _watch(index: int, pid: int, start_token: int) -> None:
    fd = _coordinator_pidfd(pid, start_token)
    if fd is not None and fd >= 0:
        # Readable once the process has exited: no wake-up until then, where a check every
        # CHECK_INTERVAL woke every idle worker 4 times a second.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
    elif fd is None:
        while is_alive(pid, start_token):
            time.sleep(CHECK_INTERVAL)
    _die(index, pid)


def _die(index: int, pid: int) -> None:
    # stderr, not loguru: a worker's log is silent unless asked for, and an exit mid-job must
    # leave a trace. The stream may be a pipe whose reader died with the coordinator.
    try:
        print(f"shmpool worker {index} (pid {os.getpid()}): its coordinator (pid {pid}) is gone; "
              f"exiting with status {EXIT_COORDINATOR_GONE}, abandoning any job in progress",
              file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # nowhere left to say it; the exit status still does
    os._exit(EXIT_COORDINATOR_GONE)


def start_watchdog(index: int, coordinator: tuple[int, int]) -> threading.Thread:
    """Start the daemon thread that ends this process when ``coordinator`` (pid, start token) dies.

    Never blocks. The thread is a daemon: a worker that stops normally simply exits past it.
    """
    pid, start_token = coordinator
    thread = threading.Thread(target=_watch, args=(index, pid, start_token), name="shmpool-worker-watchdog",
                              daemon=True)
    thread.start()
    return thread
