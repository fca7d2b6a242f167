"""The processes a failing test started and left running: found, stopped, named in its report.

A test that fails half-way skips its own clean-up: a coordinator or worker it started would run
on, holding /dev/shm names, until the session's end (or for ever, if it hangs). Only the
processes started during the test's call phase are judged, so module- and session-scoped
fixtures' processes (started in set-up) are left alone, as are passing tests' processes (a test
may hand a process to a fixture that ends it).
"""

from __future__ import annotations

import os
import signal
import time

GRACE = 5.0  # seconds a SIGTERMed child gets to run its own clean-up (a coordinator unlinks its names)


def children() -> set[int]:
    """This process's direct children, as the kernel lists them per thread."""
    found: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children", encoding="ascii") as fh:
                found.update(int(pid) for pid in fh.read().split())
        except (OSError, ValueError):
            continue
    return found


def _is_live_child(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and int(fields[1]) == os.getpid()


def stop(pids: set[int]) -> list[int]:
    """SIGTERM then, after GRACE, SIGKILL each of ``pids`` still running; the ones that had to be stopped."""
    running = [pid for pid in pids if _is_live_child(pid)]
    for pid in running:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline and any(_is_live_child(pid) for pid in running):
        time.sleep(0.05)
    for pid in running:
        if _is_live_child(pid):
            os.kill(pid, signal.SIGKILL)
    for pid in running:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # reaped by its Popen or multiprocessing handle
            pass
    return running
