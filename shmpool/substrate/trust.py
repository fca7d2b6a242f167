"""Who may be trusted: every shared object and the runtime folder must be ours alone.

An instance name is a string any local user can guess, and /dev/shm is writable by everyone. So
before a process maps a segment, opens a semaphore or writes into the runtime folder, it checks
that the object belongs to its effective uid and grants nothing to group or others. Otherwise
another user could create ``shmpool.NAME.*`` first and serve their data to our readers, or take
our jobs into their workers.

- Segments are checked with ``fstat`` on the descriptor just opened: exactly the object we map.
- Semaphores expose no descriptor. On Linux they are the files ``/dev/shm/sem.<name>``, so they
  are checked with ``lstat`` before and after ``sem_open``, and the two must be the same inode.
  /dev/shm is sticky (mode 1777), so nobody but us (and root) can rename or unlink our files:
  if the name was ours before and is the same inode after, it was ours in between. Elsewhere
  (macOS) semaphores are not files and cannot be checked.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import posix_ipc

from ..errors import AttachError, UntrustedObject

__all__ = ["SHM_DIR", "shm_path", "sem_path", "check_stat", "is_ours", "verify_fd", "verify_path",
           "open_semaphore"]

SHM_DIR = Path("/dev/shm")
# sem_open names its file /dev/shm/sem.<name> in glibc; other systems keep semaphores elsewhere.
_SEM_FILES = sys.platform.startswith("linux")
_LOOSE_BITS = 0o077  # any permission for group or others


def shm_path(posix_name: str) -> Path:
    """Where Linux shows segment ``/x`` (``/dev/shm/x``)."""
    return SHM_DIR / posix_name.lstrip("/")


def sem_path(posix_name: str) -> Path:
    """Where glibc keeps semaphore ``/x`` (``/dev/shm/sem.x``)."""
    return SHM_DIR / ("sem." + posix_name.lstrip("/"))


def is_ours(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid()


def check_stat(st: os.stat_result, *, instance: str, path: str) -> None:
    """Raise UntrustedObject unless ``st`` is a regular file of ours with no group/other bits."""
    if is_ours(st) and stat.S_ISREG(st.st_mode) and not st.st_mode & _LOOSE_BITS:
        return
    raise UntrustedObject(name=instance, path=path, owner_uid=st.st_uid, mode=stat.S_IMODE(st.st_mode),
                          kind=_kind(st), expected_uid=os.geteuid())


def _kind(st: os.stat_result) -> str:
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "symlink" if stat.S_ISLNK(st.st_mode) else "special file"


def verify_fd(fd: int, *, instance: str, path: str) -> None:
    """Check the object behind an open descriptor (exact: no window between check and use)."""
    check_stat(os.fstat(fd), instance=instance, path=path)


def verify_path(path: Path, *, instance: str) -> None:
    """Check the file at ``path`` without following a symlink; a missing file passes."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    check_stat(st, instance=instance, path=str(path))


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_semaphore(posix_name: str, *, instance: str) -> posix_ipc.Semaphore:
    """Open existing semaphore ``posix_name`` once it is proven ours.

    Raises posix_ipc.ExistentialError if it does not exist (as ``posix_ipc.Semaphore`` does, so
    callers keep treating absence as "coordinator gone"), UntrustedObject if it is another user's
    or open to group/others, AttachError if it changed while being opened.
    """
    if not _SEM_FILES:
        return posix_ipc.Semaphore(posix_name)
    path = sem_path(posix_name)
    before = _lstat(path)
    if before is None:
        raise posix_ipc.ExistentialError(f"No semaphore exists with the name {posix_name}")
    check_stat(before, instance=instance, path=str(path))
    try:
        sem = posix_ipc.Semaphore(posix_name)
    except posix_ipc.PermissionsError as exc:
        raise AttachError(name=instance, reason=f"semaphore {path}: {exc}") from None
    after = _lstat(path)
    if after is None or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        sem.close()
        raise AttachError(name=instance, reason=f"semaphore {path} was replaced while being opened "
                                                "(the instance is restarting, or someone interferes)")
    return sem
