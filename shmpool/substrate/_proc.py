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


def _state_and_start(pid: int) -> tuple[bytes, int] | None:
    """(state letter, start time) of ``pid`` from /proc/PID/stat, or None if it has none.

    Read with os.read and scanned in place, not through a buffered file and a list of ~50
    decoded fields: every reader process asks at attach (its own identity, its coordinator's
    liveness), and those temporaries were a page of its private memory (docs/performance.md,
    issue 22)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name may contain spaces and parentheses; the fields we want follow the last ')':
    # state is field 3, starttime field 22, so 19 separators after the state.
    at = raw.rfind(b")") + 2
    if at < 2 or at >= len(raw):
        return None
    state = raw[at:at + 1]
    for _ in range(19):
        at = raw.find(b" ", at) + 1
        if at <= 0:
            return None
    end = raw.find(b" ", at)
    try:
        return state, int(raw[at:end if end >= 0 else len(raw)])
    except ValueError:
        return None


def start_token(pid: int) -> int:
    """The process start time in clock ticks since boot, or 0 where it cannot be known."""
    if not _HAVE_PROC:
        return 0
    fields = _state_and_start(pid)
    return 0 if fields is None else fields[1]


def is_alive(pid: int, token: int = 0) -> bool:
    """True if ``pid`` runs and (when ``token`` is non-zero) is the same process that had ``token``."""
    if pid <= 0:
        return False
    if _HAVE_PROC:
        fields = _state_and_start(pid)
        if fields is None:
            return False
        if fields[0] in (b"Z", b"X", b"x"):
            return False
        return token == 0 or fields[1] == token
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
