"""Copying a region file into pool blocks through file descriptors, not through the mapping.

Measured on the 14-dimension sample (31.8 MB, page cache warm, blocks already reserved with
``posix_fallocate`` by the allocator): a memoryview copy from the file's mapping into the pool's
mapping takes ~12 ms, because every destination page is first faulted into this process's page
tables (and, being a reserved but never-written tmpfs page, zeroed) before it is overwritten;
``sendfile(pool fd, file fd)`` writes the same bytes in ~4 ms, straight into the page cache,
without touching this process's page tables. ``pwrite`` from the file's mapping sat between
(~6 ms); ``copy_file_range`` refuses a copy between two file systems (EXDEV); ``preadv`` into
the mapping faults like the memoryview copy. So: ``sendfile`` on Linux, the mapping elsewhere.

The page reservation stays where it is (the allocator reserves before it hands out a handle),
so a full /dev/shm is still a typed SharedMemoryFull before any byte moves.
"""

from __future__ import annotations

import mmap
import os
import stat
import sys

import posix_ipc
from shmpool.substrate._log import logger

from shmpool.substrate import platform
from shmpool.errors import RegionFormatError
from shmpool.substrate.instance import SharedInstance
from shmpool.data.region import HEADER, HEADER_SIZE, MAGIC, MAX_NAME_BYTES, Header, Region

__all__ = ["check_by_reading", "RegionFile", "PoolWriter", "SENDFILE"]

# Linux's sendfile writes to any file; macOS's only to sockets.
SENDFILE = sys.platform.startswith("linux") and hasattr(os, "sendfile")
HEADER_FIELD_LENGTH = Header._fields.index("region_length")


def check_by_reading(fd: int, st: os.stat_result, path: str) -> None:
    """Region.open's validation of the open file ``fd`` (``st`` its stat; RegionFormatError
    worded as Region.open words it, naming ``path``), over its bytes read into memory instead of
    a mapping: a file truncated meanwhile is a short read, never a SIGBUS, and the coordinator
    must never die by a signal. For the files start-up skips (a duplicate id, a header that
    looks wrong): the file the caller holds open, read whole, once."""
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        Region.open(path).close()  # refuses these before it maps anything, in its own words
        raise RegionFormatError(source=path, fault="changed while being read")
    data = bytearray(st.st_size)
    view, done = memoryview(data), 0
    try:
        while done < len(data):
            got = os.preadv(fd, [view[done:]], done)
            if got == 0:
                raise RegionFormatError(source=path, fault=f"changed size while being read "
                                                           f"({done} of {len(data)} bytes)", offset=done)
            done += got
    except OSError as exc:
        raise RegionFormatError(source=path, fault=f"cannot read: {exc.strerror or exc}") from None
    Region.from_buffer(data, source=path).close()


class RegionFile:
    """An open region file: its descriptor, its stat and its header, nothing mapped.

    Only what placing needs is read (64 bytes); the structure and the content are checked on
    the copy in shared memory, which is what readers will see (a file changed after a check of
    the file could otherwise be served unchecked).
    """

    __slots__ = ("path", "fd", "stat", "header")

    def __init__(self, path: str, fd: int, st: os.stat_result, header: Header) -> None:
        self.path, self.fd, self.stat, self.header = path, fd, st, header

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "RegionFile":
        """Open ``path`` and read its header. Raises RegionFormatError (as Region.open words it)
        for a file that cannot be opened or is not a region; the caller closes."""
        source = os.fspath(path)
        try:
            # O_NONBLOCK: opening a FIFO must not hang; it does nothing for regular files.
            fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise RegionFormatError(source=source, fault=f"cannot open: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            raw = os.pread(fd, HEADER_SIZE, 0) if stat.S_ISREG(st.st_mode) else b""
            plausible = (len(raw) == HEADER_SIZE and raw[:len(MAGIC)] == MAGIC
                         and HEADER.unpack_from(raw, 0)[HEADER_FIELD_LENGTH] == st.st_size)
            if not plausible:
                # Let the full validator word the fault exactly (empty, not regular, bad magic,
                # truncated), over the bytes read, not a mapping: only bad files pay.
                check_by_reading(fd, st, source)
                raise RegionFormatError(source=source, fault="changed while being opened")
            return cls(source, fd, st, Header._make(HEADER.unpack_from(raw, 0)))
        except BaseException:
            os.close(fd)
            raise

    @property
    def nbytes(self) -> int:
        return self.stat.st_size

    def name(self) -> str:
        """The dimension name the header announces (its bytes follow the header), read alone so
        that room for the layer index can be sized before the copy. Undecodable bytes become
        U+FFFD: the structural check of the copy then refuses the file for its name."""
        length = min(self.header.name_length, MAX_NAME_BYTES)
        return os.pread(self.fd, length, HEADER_SIZE).decode("utf-8", "replace")

    def unchanged(self) -> bool:
        """Whether the file still has the stat it had when opened (same inode, size, stamps)."""
        now = os.fstat(self.fd)
        was = self.stat
        return (now.st_ino, now.st_dev, now.st_size, now.st_mtime_ns, now.st_ctime_ns) == \
               (was.st_ino, was.st_dev, was.st_size, was.st_mtime_ns, was.st_ctime_ns)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RegionFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PoolWriter:
    """Writes files into views of an instance's pools; holds one writable fd per pool it used."""

    def __init__(self, inst: SharedInstance) -> None:
        self._inst = inst
        self._fds: dict[str, int] = {}

    def copy(self, src: RegionFile, view: memoryview) -> None:
        """Fill ``view`` (exactly ``src.nbytes`` long) with the file's bytes.

        Raises RegionFormatError if the file shrank meanwhile, SharedMemoryFull if /dev/shm
        refused a page (cannot happen for reserved blocks; kept typed all the same)."""
        if not SENDFILE:
            with mmap.mmap(src.fd, 0, access=mmap.ACCESS_READ) as mapping:
                if len(mapping) != len(view):
                    raise RegionFormatError(source=src.path, fault="changed size while being copied")
                view[:] = mapping
            return
        seg, offset = self._inst.locate(view)
        out = self._fd(seg.name)
        os.lseek(out, offset, os.SEEK_SET)
        done, total = 0, len(view)
        try:
            while done < total:
                sent = os.sendfile(out, src.fd, done, total - done)
                if sent == 0:
                    raise RegionFormatError(source=src.path, offset=done,
                                            fault=f"shrank to {done} bytes while being copied")
                done += sent
        except OSError as exc:
            if platform.is_full(exc):
                raise platform.full_error(total - done, f"{src.path} into {seg.name}") from None
            raise

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            shm = posix_ipc.SharedMemory(name)  # our own instance's segment, created by us
            fd = self._fds[name] = shm.fd
        return fd

    def close(self) -> None:
        for name, fd in self._fds.items():
            try:
                os.close(fd)
            except OSError as exc:
                logger.debug("closing the fd of {}: {}", name, exc)
        self._fds.clear()

    def __enter__(self) -> "PoolWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
