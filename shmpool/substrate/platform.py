"""What this platform's shared-memory filesystem offers: its free space, and page reservation.

POSIX shared memory on Linux is a tmpfs (``/dev/shm``) whose pages are allocated on first
touch. When the filesystem is full, that first touch does not fail politely: the kernel sends
SIGBUS to whichever process wrote (or even read) the page, and the process dies. So every page
shmpool will touch is *reserved* first with ``posix_fallocate``, which allocates the pages of a
range and fails with ENOSPC instead; :func:`reserve_pages` is that call, and :func:`space` is the
``statvfs`` the errors and the start-up check quote. Both live here so that no other module
decides what the platform supports.
"""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

from ..errors import SharedMemoryFull
from .names import SHM_DIR

__all__ = ["ShmSpace", "space", "reserve_pages", "full_error", "is_full", "CAN_RESERVE"]

# macOS has no posix_fallocate and no /dev/shm; there shared memory is not a size-limited
# filesystem, so nothing is reserved and no space is reported.
CAN_RESERVE = hasattr(os, "posix_fallocate")
# ENOMEM: the pages would pass a memory cgroup's limit (a container's --memory).
_FULL_ERRNOS = (errno.ENOSPC, errno.ENOMEM)


class ShmSpace(NamedTuple):
    """Size and free bytes of the shared-memory filesystem, as ``statvfs`` reports them."""
    filesystem: str
    size: int
    free: int


def space() -> ShmSpace | None:
    """The shared-memory filesystem's size and free bytes now, or None where there is none."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return ShmSpace(str(SHM_DIR), st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


def full_error(nbytes: int, what: str) -> SharedMemoryFull:
    """The typed error for ``nbytes`` that did not fit, quoting the filesystem as it is now."""
    now = space() or ShmSpace(str(SHM_DIR), 0, 0)
    return SharedMemoryFull(nbytes=nbytes, what=what, filesystem=now.filesystem, size=now.size, free=now.free)


def reserve_pages(fd: int, offset: int, length: int, *, what: str) -> None:
    """Allocate the pages of ``[offset, offset + length)`` of shared-memory file ``fd``.

    Idempotent (pages already there stay), but not free: tmpfs walks every page of the range,
    about 1 ms per 4 MiB even when all are present (measured), so callers remember what they
    reserved. Raises SharedMemoryFull when the filesystem (or the memory cgroup) has no room;
    the kernel then gives back the pages this call allocated.
    """
    if not CAN_RESERVE or length <= 0:
        return
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno in _FULL_ERRNOS:
            raise full_error(length, what) from None
        raise


def is_full(exc: OSError) -> bool:
    """Whether an OSError of creating a shared object (a semaphore's file) means "no room"."""
    return exc.errno in _FULL_ERRNOS
