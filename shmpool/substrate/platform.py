"""What this platform offers shmpool, decided in one place: capabilities, free space, page reservation.

**Capabilities.** shmpool's crash safety rests on a few platform facts: every sleeper wakes
after a slice and looks at the truth (timed semaphore waits), a lock is an flock that two open
descriptions of one process contend for like two processes (the per-description semantics
Linux and macOS have and NFS emulation lacks), a Linux instance is found and cleaned by listing
``/dev/shm``, and the instance's names fit the platform's name limit (31 characters on macOS).
:func:`check_system` refuses a platform that lacks one with PlatformUnsupported, once, at start
and attach, in the manner of loky's ``_check_system_limits()``, instead of hanging later on a
lost wake-up or failing with a bare OSError deep inside ``sem_open``. :data:`TIMED_WAITS` and
:data:`SEMAPHORE_VALUES` are what other modules ask instead of reading posix_ipc's flags.

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
import fcntl
import os
import sys
from pathlib import Path
from typing import NamedTuple

import posix_ipc

from ..errors import PlatformUnsupported, SharedMemoryFull
from .names import runtime_dir, semaphore_name
from .trust import SHM_DIR

__all__ = ["ShmSpace", "space", "reserve_pages", "full_error", "is_full", "CAN_RESERVE", "Capabilities",
           "capabilities", "check_system", "gil_enabled", "TIMED_WAITS", "SEMAPHORE_VALUES"]

# macOS has no posix_fallocate and no /dev/shm; there shared memory is not a size-limited
# filesystem, so nothing is reserved and no space is reported.
CAN_RESERVE = hasattr(os, "posix_fallocate")
# ENOMEM: the pages would pass a memory cgroup's limit (a container's --memory).
_FULL_ERRNOS = (errno.ENOSPC, errno.ENOMEM)
# sem_timedwait exists: a wait with a timeout ends (posix_ipc makes it infinite otherwise).
TIMED_WAITS: bool = bool(posix_ipc.SEMAPHORE_TIMEOUT_SUPPORTED)
# sem_getvalue works (not on macOS): wake-ups are then posted only to a semaphore at 0.
SEMAPHORE_VALUES: bool = bool(posix_ipc.SEMAPHORE_VALUE_SUPPORTED)
# Darwin's PSHMNAMLEN: the longest shm_open / sem_open name, slash included.
_DARWIN_NAME_MAX = 31
# The longest kind of object an instance creates (shmpool.substrate.names), for the name-length check.
_LONGEST_KIND = "jobs-pending"


class Capabilities(NamedTuple):
    """What a platform offers shmpool; :func:`capabilities` measures this one's."""
    timed_waits: bool          # sem_timedwait: every sleeper looks again after a slice
    name_max: int              # longest shared-object name accepted, leading slash included
    needs_shm_dir: bool        # Linux: objects are files in /dev/shm (cleanup, trust checks)
    shm_dir: bool              # /dev/shm exists and is a folder
    flock_excludes: bool       # two open descriptions of one file exclude each other (flock)


def _name_max() -> int:
    if sys.platform == "darwin":
        return _DARWIN_NAME_MAX
    try:
        # A semaphore /NAME is the file sem.NAME in /dev/shm: 4 characters more, slash dropped.
        return int(os.pathconf(SHM_DIR, "PC_NAME_MAX")) - len("sem.") + 1
    except (OSError, ValueError):
        return _DARWIN_NAME_MAX  # the strictest limit we know of


def _flock_excludes(folder: Path) -> bool:
    """Whether a second open description of a locked file is refused the flock (SharedLock's rule)."""
    # Not tempfile.mkstemp: its name generator is a random.Random, 2.5 kB of Mersenne Twister
    # state kept for the life of every process that attaches (docs/performance.md, issue 22).
    path = os.path.join(folder, f".flock-probe-{os.getpid()}-{os.urandom(6).hex()}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        other = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False  # locks per process (POSIX record-lock emulation): no exclusion
        finally:
            os.close(other)
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(path)


_measured: Capabilities | None = None


def capabilities(folder: Path | None = None) -> Capabilities:
    """This platform's capabilities. The flock probe runs in ``folder``; by default in the runtime
    folder, where the locks live, and then measured once per process."""
    global _measured
    if folder is not None:
        return _measure(Path(folder))
    if _measured is None:
        _measured = _measure(runtime_dir())
    return _measured


def _measure(folder: Path) -> Capabilities:
    return Capabilities(TIMED_WAITS, _name_max(), sys.platform.startswith("linux"), os.path.isdir(SHM_DIR),
                        _flock_excludes(folder))


def gil_enabled() -> bool:
    """False only on a free-threaded CPython running without its GIL (3.13+). Asked at every
    create and attach (not once per process): what the interpreter says at that moment."""
    probe = getattr(sys, "_is_gil_enabled", None)  # absent before 3.13: every such CPython has the GIL
    return True if probe is None else bool(probe())


def check_system(name: str, caps: Capabilities | None = None) -> Capabilities:
    """Refuse to serve instance ``name`` on a platform that lacks what shmpool relies on.

    Raises PlatformUnsupported naming the missing capability and what to do; returns the
    capabilities otherwise. ``caps``: the capabilities to judge (default: this platform's,
    measured once per process)."""
    caps = capabilities() if caps is None else caps
    if not gil_enabled():
        raise PlatformUnsupported(capability="the GIL", reason=(
            "this free-threaded interpreter runs without it (PYTHON_GIL=0 or -X gil=0); a reader's lookup "
            "relies on it, as no other thread of the process may touch the reader's cache word while a "
            "lookup reads a generation the coordinator could otherwise reclaim under it "
            "(shmpool/_core/_lookup.pyx); run this interpreter with the GIL (-X gil=1)"))
    if not caps.timed_waits:
        raise PlatformUnsupported(capability="timed semaphore waits", reason=(
            "sem_timedwait is missing (posix_ipc.SEMAPHORE_TIMEOUT_SUPPORTED is False), so a wake-up lost "
            "to a crashed process would leave its sleeper waiting for ever"))
    longest = semaphore_name(name, _LONGEST_KIND)
    if len(longest) > caps.name_max:
        raise PlatformUnsupported(capability="name lengths", reason=(
            f"instance {name!r} needs shared-object names of {len(longest)} characters ({longest}), this "
            f"platform accepts {caps.name_max}; use a name of at most "
            f"{max(0, len(name) - (len(longest) - caps.name_max))} characters"))
    if caps.needs_shm_dir and not caps.shm_dir:
        raise PlatformUnsupported(capability=str(SHM_DIR), reason=(
            f"{SHM_DIR} is missing: POSIX shared memory lives there on Linux (mount a tmpfs there, or "
            "run the container with /dev/shm)"))
    if not caps.flock_excludes:
        raise PlatformUnsupported(capability="flock", reason=(
            "two open descriptions of one file do not exclude each other under flock here (a network "
            "filesystem?); set SHMPOOL_RUNTIME_DIR to a local folder (a tmpfs such as /run/user/UID)"))
    return caps


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


def full_error(nbytes: int, what: str, advice: str | None = None) -> SharedMemoryFull:
    """The typed error for ``nbytes`` that did not fit, quoting the filesystem as it is now.

    ``advice`` is what would make the object smaller (default: lower the memory limit)."""
    now = space() or ShmSpace(str(SHM_DIR), 0, 0)
    extra = {} if advice is None else {"advice": advice}
    return SharedMemoryFull(nbytes=nbytes, what=what, filesystem=now.filesystem, size=now.size, free=now.free,
                            **extra)


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
