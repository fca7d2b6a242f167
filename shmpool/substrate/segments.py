"""One named POSIX shared-memory object, mapped into this process.

Lifetime model, as in ``multiprocessing.shared_memory``: ``close()`` means "this process is done
with the mapping", ``unlink()`` means "everyone is done, remove the name". Only the creator (the
coordinator) unlinks; a reader that exits never removes anything.

We use posix_ipc rather than ``multiprocessing.shared_memory`` because the latter registers every
segment it *attaches to* with ``multiprocessing.resource_tracker``, which then unlinks the segment
when the attaching process exits (CPython gh-82300): a reader exiting would destroy the instance.

The file descriptor is closed right after mapping: the mapping alone keeps the memory reachable,
so a process holds no descriptor per segment however many it attaches. :meth:`Segment.reserve_pages`
reopens the name for the moment it needs one (a few µs, paid only for pages never reserved).

Pages of a segment are allocated on first touch, and on a full /dev/shm that touch is a SIGBUS:
every page a process will touch is reserved first (``shmpool.substrate.platform``), whole at creation for
the fixed segments (control, job board), block range by block range for the pools.
"""

from __future__ import annotations

import mmap

import posix_ipc
from ._log import logger

from . import platform
from ..errors import AttachError, InvalidArgument
from .removal import missing_name_hint
from .trust import shm_path, verify_fd, verify_path

__all__ = ["Segment", "close_mapping"]

SHMEM_THP = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
_MODE = 0o600


def close_mapping(mm: mmap.mmap, name: str) -> None:
    """Unmap ``mm`` (a segment's or a mapped file's, ``name`` for the log) unless views of it are still out."""
    try:
        mm.close()
    except BufferError:
        # A memoryview or numpy array handed out earlier still points into the mapping. Closing
        # would make it dangle, so the mapping lives on until the last view is collected.
        logger.debug("mapping {} still has views exported; unmapping deferred to the collector", name)


class Segment:
    """A mapped shared-memory segment; create with :meth:`create`, open with :meth:`attach`.

    Its owner (a SharedInstance, a job board) closes it; the ``mmap`` object is the last line of
    defence: it unmaps itself when collected, which cannot happen while a view of it is alive.
    So no ``weakref.finalize`` of its own, as for a MappedFile: a reader maps the control
    segment and a pool or two, and a finalizer each was ~0.4 kB of its private memory
    (docs/performance.md, issue 22)."""

    __slots__ = ("name", "size", "mm", "closed", "__weakref__")

    def __init__(self, name: str, mm: mmap.mmap, size: int) -> None:
        self.name = name
        self.size = size
        self.mm = mm
        self.closed = False  # close() was called (the unmap itself waits while views are out)

    @classmethod
    def create(cls, name: str, size: int, *, reserve: bool = False) -> "Segment":
        """Create segment ``name`` of ``size`` bytes (mode 0600); fails if the name exists.

        tmpfs allocates pages only when first touched, so a large segment costs nothing until used.
        ``reserve`` allocates every page now instead (raises SharedMemoryFull, leaving no name,
        when they do not fit): for fixed-size segments whose every byte may be written.
        """
        if size <= 0:
            raise InvalidArgument(argument="size", value=size, reason=f"segment {name}: size must be positive")
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=_MODE, size=size)
        try:
            if reserve:
                platform.reserve_pages(shm.fd, 0, size, what=f"segment {name}")
            mm = mmap.mmap(shm.fd, size)
        except BaseException:
            shm.close_fd()
            posix_ipc.unlink_shared_memory(name)
            raise
        shm.close_fd()
        return cls(name, mm, size)

    def reserve_pages(self, offset: int, length: int, *, what: str = "") -> None:
        """Allocate the pages of ``[offset, offset + length)`` so touching them cannot SIGBUS.

        Raises SharedMemoryFull naming the filesystem and its free bytes when they do not fit,
        AttachError if the name is gone (the coordinator stopped)."""
        if not platform.CAN_RESERVE:
            return
        try:
            shm = posix_ipc.SharedMemory(self.name)
        except posix_ipc.ExistentialError:
            raise AttachError(name=self.name, reason=f"segment {self.name} no longer exists") from None
        try:
            platform.reserve_pages(shm.fd, offset, length, what=what or f"{length} bytes of segment {self.name}")
        finally:
            shm.close_fd()

    def advise_huge_pages(self) -> str | None:
        """Ask for transparent huge pages on this mapping; returns None on success, else why not.

        For shared memory (tmpfs) Linux honours MADV_HUGEPAGE only when
        /sys/kernel/mm/transparent_hugepage/shmem_enabled is ``advise``, ``always`` or
        ``within_size``; elsewhere the call succeeds and does nothing, so we check that too."""
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is None:
            return "this platform has no MADV_HUGEPAGE"
        try:
            self.mm.madvise(advice)
        except OSError as exc:
            return f"madvise(MADV_HUGEPAGE) failed: {exc}"
        try:
            with open(SHMEM_THP) as f:
                setting = f.read().split("[", 1)[-1].split("]", 1)[0]
        except OSError:
            return f"cannot read {SHMEM_THP}: the kernel has no transparent huge pages for shared memory"
        if setting not in ("advise", "always", "within_size", "force"):
            return f"{SHMEM_THP} is '{setting}': the kernel ignores the advice for shared memory"
        return None

    @classmethod
    def attach(cls, name: str, *, instance: str, writable: bool = True) -> "Segment":
        """Map existing segment ``name`` once it is proven ours (trust.verify_fd).

        Raises AttachError naming ``instance`` if it is absent or empty, UntrustedObject (an
        AttachError) if another user owns it or it grants group/others any access.
        """
        try:
            shm = posix_ipc.SharedMemory(name, 0 if writable else posix_ipc.O_RDONLY)
        except posix_ipc.ExistentialError:
            # Not running, or (when a coordinator still holds the name) removed under it: say which.
            raise AttachError(name=instance,
                              reason=f"segment {name} does not exist{missing_name_hint(instance)}") from None
        except posix_ipc.PermissionsError as exc:
            verify_path(shm_path(name), instance=instance)  # names the owner when it is someone else
            raise AttachError(name=instance, reason=f"segment {name}: {exc}") from None
        try:
            verify_fd(shm.fd, instance=instance, path=str(shm_path(name)))
            size = shm.size
            if size <= 0:
                raise AttachError(name=instance, reason=f"segment {name} is empty (still being created?)")
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            mm = mmap.mmap(shm.fd, size, access=access)
        finally:
            shm.close_fd()
        return cls(name, mm, size)

    def close(self) -> None:
        """Unmap in this process (idempotent; deferred while views of it are alive)."""
        if not self.closed:
            self.closed = True
            close_mapping(self.mm, self.name)

    def unlink(self) -> None:
        """Remove the name system-wide (idempotent); existing mappings stay valid until closed."""
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            logger.debug("segment {} was already unlinked", self.name)

    def __enter__(self) -> "Segment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "mapped"
        return f"<Segment {self.name} {self.size} bytes {state}>"
