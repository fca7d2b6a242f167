"""Names removed from /dev/shm under a live coordinator: how to tell, and what to tell the user.

systemd-logind removes every System V and POSIX IPC object of a user when that user fully logs
out (``RemoveIPC=yes`` in /etc/systemd/logind.conf, the default on many distributions; root and
system users are exempt). A coordinator started from a login session loses all its /dev/shm
names at the session's end while it runs on: the mappings it and its readers hold stay valid,
but nothing new can attach. The coordinator notices (coordinator/name_watch.py) and stops; until
it has, every other process sees a live coordinator holding the instance's lock file and names
that are gone, and says so in the same words (:func:`removed_reason`).

The lock holder is read from /proc/locks, which lists every flock with its holder's pid and the
locked file's device and inode: reading it takes no lock itself, so asking can never make a
coordinator that is starting fail with InstanceExists. Where there is no /proc/locks the holder
is unknown and the callers fall back to what they said before.
"""

from __future__ import annotations

import os

from ..errors import ShmPoolError
from .names import coordinator_lock_path

__all__ = ["REMOVEIPC_ADVICE", "flock_holder", "coordinator_pid", "removed_reason", "missing_name_hint"]

PROC_LOCKS = "/proc/locks"

REMOVEIPC_ADVICE = (
    "systemd-logind removes a user's shared memory and semaphores when the user's last session ends "
    "(RemoveIPC=yes in /etc/systemd/logind.conf, the default on many distributions): set RemoveIPC=no there "
    "and restart systemd-logind, or run the coordinator as a system user, whose names logind leaves alone "
    "(docs/operations.md, Names removed under a running instance)")


def flock_holder(path: str | os.PathLike[str]) -> int | None:
    """Pid of the process holding a flock on ``path``; None if nobody does or it cannot be told.

    The kernel names the process that took the lock whatever state it is in (starting, stopped).
    Linux only (/proc/locks); the pid is as this process's pid namespace sees it (0 or negative
    where the holder is outside it: told as unknown)."""
    try:
        st = os.stat(path)
        with open(PROC_LOCKS, "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 15590 fe:00:2152226 0 EOF": device as hex major:minor, then the
    # inode. A waiter queued behind the holder reads "1: -> FLOCK ...": its fields are shifted by
    # one, so it never matches.
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}".encode()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == b"FLOCK" and fields[5] == want and fields[4].isdigit():
            pid = int(fields[4])
            return pid if pid > 0 else None
    return None


def coordinator_pid(name: str) -> int | None:
    """Pid of the coordinator holding instance ``name``'s lock file (for its whole life), None if none is seen."""
    try:
        path = coordinator_lock_path(name)
    except (ShmPoolError, OSError, ValueError):  # an unusable runtime folder: nobody we could see holds it
        return None
    return flock_holder(path) or None


def removed_reason(name: str, pid: int) -> str:
    """The one sentence every command says when instance ``name``'s names are gone under coordinator ``pid``."""
    return (f"its names were removed from /dev/shm while its coordinator (pid {pid}) still runs and holds "
            f"the lock of {name!r}; the coordinator stops by itself within seconds. Likely cause: {REMOVEIPC_ADVICE}")


def missing_name_hint(name: str) -> str:
    """What to add to "segment ... does not exist": the likely cause when a coordinator still holds the lock.

    Empty when no coordinator holds it (the instance is simply not running). A coordinator that is
    starting or stopping this very millisecond holds its lock without its names too: rare enough
    that the hint says "likely"."""
    pid = coordinator_pid(name)
    return "" if pid is None else f", yet coordinator pid {pid} holds the instance's lock: {removed_reason(name, pid)}"
