"""Region files served by mapping them: where they are, what a process checks before mapping one.

The coordinator may serve a region from a file instead of copying it into a pool
(coordinator/region_store.py decides which files, and makes them). Such a file has a row in the
control segment's files section (layout.FileCol) and, in layer indexes, the pool number
``pool_count + row``; every process maps it read-only through :class:`MappedFile`.

Mapping a file is safe only while the file cannot shrink (touching a page past the end of a
truncated file is a SIGBUS, and shmpool's standard is that a reader never dies by a signal) and
cannot change (a reader would read other bytes than were verified). So a process maps only a
file that is, when it opens it, exactly the inode the coordinator published (device, inode,
size), a regular file of its own uid, with no write bit for anyone and no access for group or
others, with one name, inside the store folder of the runtime folder (ours alone, 0700). Nobody
else can then open it for writing, truncate it, rename it or link it; our own uid could only by
first changing its mode on purpose, which is also what it takes to ftruncate one of the
instance's /dev/shm segments (0600). A file that fails a check is refused with
MappedFileChanged, nothing mapped.
"""

from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path


from ..errors import MappedFileChanged
from .names import runtime_dir

__all__ = ["STORE_FOLDER", "SUFFIX", "store_dir", "memory_backed", "file_path", "digest_words", "words_digest", "why_unsafe",
           "map_file", "map_fd", "MappedFile"]

STORE_FOLDER = "regions"   # inside the runtime folder
SUFFIX = ".region"
DIGEST_BYTES = 16          # the file's name is these bytes in hex
_NOT_OURS_BITS = 0o077 | 0o222  # any access for group/others, any write bit for anyone


def store_dir() -> Path:
    """``<runtime dir>/regions`` (runtime_dir() has checked the runtime folder is ours alone)."""
    return runtime_dir() / STORE_FOLDER


# Filesystems whose pages are memory that nothing but an unlink gives back.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def memory_backed(path: Path) -> bool:
    """Whether ``path`` lies on a filesystem held in memory (tmpfs, ramfs), from /proc/self/mountinfo.

    The store's copies outlive every coordinator on purpose (later starts reuse them). On disk they
    are page cache the kernel takes back under pressure; on tmpfs (``$XDG_RUNTIME_DIR`` is one on
    most desktops) they would be up to the store's budget of RAM held after every coordinator
    stopped, where the copy into /dev/shm is as fast and is freed at stop. Unknown counts as
    memory: the store is then not used."""
    try:
        target = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return True
    best, fstype = "", ""
    for line in lines:
        # "36 35 98:0 /root /mnt/point rw,noatime shared:1 - ext4 /dev/vda rw": the mount point is
        # field 5 (spaces escaped as \040), the type is the first field after " - ".
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        point = fields[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the last of equal mounts is the one on top
            best, fstype = point, tail.split()[0]
    return fstype in MEMORY_FILESYSTEMS or not best


def file_path(digest: bytes, folder: Path | None = None) -> Path:
    return (folder if folder is not None else store_dir()) / (digest.hex() + SUFFIX)


def digest_words(digest: bytes) -> tuple[int, int]:
    """The 16-byte digest as the two signed int64 words of a file row."""
    assert len(digest) == DIGEST_BYTES
    return (int.from_bytes(digest[:8], "big", signed=True), int.from_bytes(digest[8:], "big", signed=True))


def words_digest(word0: int, word1: int) -> bytes:
    return int(word0).to_bytes(8, "big", signed=True) + int(word1).to_bytes(8, "big", signed=True)


def why_unsafe(st: os.stat_result) -> str | None:
    """Why a file with this stat may not be mapped by readers, or None if it may."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.geteuid():
        return f"belongs to uid {st.st_uid}, not to uid {os.geteuid()}"
    if st.st_mode & _NOT_OURS_BITS:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}: writable, or open to group or others (0400 expected)"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} names (one expected)"
    return None


def map_file(path: str, *, dev: int, ino: int, size: int, instance: str) -> mmap.mmap:
    """Map ``path`` read-only if it is exactly the published file and still safe to map (module doc).

    Raises MappedFileChanged (an AttachError) otherwise; nothing is mapped then."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise MappedFileChanged(name=instance, path=path, reason=f"cannot be opened ({exc.strerror or exc})") \
            from None
    try:
        return map_fd(fd, path, dev=dev, ino=ino, size=size, instance=instance)
    finally:
        os.close(fd)


def map_fd(fd: int, path: str, *, dev: int, ino: int, size: int, instance: str) -> mmap.mmap:
    """Map open descriptor ``fd`` (of ``path``) after the same checks as :func:`map_file`; the
    caller keeps and closes ``fd``."""
    st = os.fstat(fd)
    why = why_unsafe(st)
    if why is None and (st.st_dev, st.st_ino, st.st_size) != (dev, ino, size):
        why = (f"is another file now (device {st.st_dev} inode {st.st_ino}, {st.st_size} bytes; "
               f"published: device {dev} inode {ino}, {size} bytes)")
    if why is not None:
        raise MappedFileChanged(name=instance, path=path, reason=why)
    return mmap.mmap(fd, size, access=mmap.ACCESS_READ)


class MappedFile:
    """A served region file as this process maps it, with the pool-segment interface (``mm``,
    ``size``, ``name``), for code that reads a pool number's mapping as a segment (the
    coordinator's publisher).

    Not an owner: the instance that mapped the file keeps the ``mmap`` object alone (one per
    file, none of this per file: a reader maps a file per served region, and an object with
    its path each was ~120 B of its private memory, docs/performance.md issue 22) and closes it
    with the rest; the mmap is the last line of defence (it unmaps itself when collected, which
    cannot happen while a view of it is alive). SharedInstance.pool_segment makes one per call."""

    __slots__ = ("name", "mm")

    def __init__(self, name: str, mm: mmap.mmap) -> None:
        self.name = name
        self.mm = mm

    @property
    def size(self) -> int:
        """The mapping's length (the region's exact size; 0 once unmapped)."""
        return 0 if self.mm.closed else len(self.mm)

    @property
    def closed(self) -> bool:
        """True once unmapped in this process (after the instance closed and the last view went)."""
        return self.mm.closed

    def __repr__(self) -> str:
        return f"<MappedFile {self.name} {self.size} bytes {'closed' if self.closed else 'mapped'}>"
