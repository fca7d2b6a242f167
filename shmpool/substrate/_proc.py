"""Process liveness that survives pid reuse and sees through zombies.

A pid alone is not an identity: after a crash the kernel may hand the same pid to an unrelated
process. On Linux we pair the pid with its start time (field 22 of /proc/PID/stat), which is
unique for the life of the boot. A SIGKILLed child that its parent has not reaped yet is a zombie:
``kill(pid, 0)`` still succeeds, so we read its state letter too and count ``Z``/``X`` as dead.
"""

from __future__ import annotations

import os

__all__ = ["start_token", "is_alive", "my_identity", "child_pids"]

_HAVE_PROC = os.path.isdir("/proc/self")
_cached: tuple[int, int] | None = None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; the fields we want follow the last ')'.
    tail = raw[raw.rfind(b")") + 2:].split()
    return [f.decode("ascii", "replace") for f in tail]


def start_token(pid: int) -> int:
    """The process start time in clock ticks since boot, or 0 where it cannot be known."""
    if not _HAVE_PROC:
        return 0
    fields = _stat_fields(pid)
    if not fields or len(fields) < 20:
        return 0
    return int(fields[19])


def is_alive(pid: int, token: int = 0) -> bool:
    """True if ``pid`` runs and (when ``token`` is non-zero) is the same process that had ``token``."""
    if pid <= 0:
        return False
    if _HAVE_PROC:
        fields = _stat_fields(pid)
        if fields is None:
            return False
        if fields[0] in ("Z", "X", "x"):
            return False
        return token == 0 or int(fields[19]) == token
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def my_identity() -> tuple[int, int]:
    """(pid, start token) of the calling process; recomputed after fork.

    Cached, and forgotten in a forked child (``os.register_at_fork``): the job path asks for it
    at every submit, take and finish, and getpid() is a system call (~0.3 us on the 2-core VM,
    more under load), three of them a job."""
    global _cached
    if _cached is None:
        pid = os.getpid()
        _cached = (pid, start_token(pid))
    return _cached


def child_pids(pid: int) -> list[int]:
    """The pids of ``pid``'s children, from every thread's /proc/PID/task/TID/children (a child
    is listed under the thread that forked it, so the main thread's list alone can miss some).

    Linux only; a test's and scripts/chaos.py's way to find a coordinator's workers to kill."""
    kids: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as fh:
            kids += [int(k) for k in fh.read().split()]
    return kids


def _forget_identity_after_fork() -> None:
    global _cached
    _cached = None


os.register_at_fork(after_in_child=_forget_identity_after_fork)
