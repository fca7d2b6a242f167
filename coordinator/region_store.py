"""The region store: verified, immutable copies of region files, served by mapping them.

A warm start used to copy every region file into pool blocks: for the 14-dimension sample the
kernel allocating and filling 31.8 MB of tmpfs pages was ~14-18 ms of a 26.7 ms start. LMDB
serves its file by mapping it; so does shmpool now, for files it can trust to stay put. A
file a reader maps must never shrink (a page past the end is a SIGBUS) or change (it would read
other bytes than were verified), and a user's own data file can be rewritten in place at any
time (an editor, ``cp``, a build tool). So the coordinator does not map the user's file: it maps
**its own copy**, made once and reused by every later start while the source is unchanged:

* ``<runtime dir>/regions/<digest>.region``, where the digest (16 bytes of BLAKE2b) is taken
  over the source's identity: ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, header
  meta CRC)``, the validation cache's FileKey (coordinator/verified.py says why that identity is
  enough, and about racy timestamps: a source younger than the racy margin is not stored).
* Made by copying the source's descriptor into a temporary file of the store, checking the copy
  in full (structure, every layer's CRC32, every text layer's UTF-8), ``fchmod 0400``, then
  ``link()`` to its name: a name in the store is always a complete, verified copy, and an
  existing name is never replaced (two coordinators making the same copy keep the first).
* Served only while it is a regular file of ours, mode 0400, one name, in the runtime folder
  (ours alone, 0700): nobody else can open it, and our own uid can change it only by changing
  its mode first (substrate/mapped_files.py). Each serving coordinator holds it open with a
  shared flock until it stops.
* Sources the store does not take, copied into pool blocks as before: files of another owner,
  files group or others may write (someone else could rewrite them between our stat and our
  copy), sources changed within the racy margin, and any file when the files section is full.

Bounded: after a start that added copies, and at every clean stop, files no coordinator holds
(no shared flock) are removed oldest-used first until at most :data:`STORE_MAX_BYTES` of them are
left; temporaries of killed copies go then too. Copies in use are never removed, whatever their
size.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import stat
import struct
import tempfile
import time
import weakref
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout
from shmpool.substrate._log import logger

from shmpool.errors import RegionFormatError
from shmpool.substrate.mapped_files import SUFFIX, file_path, store_dir, why_unsafe

from .file_copy import SENDFILE, RegionFile
from .verified import FileKey

__all__ = ["RegionStore", "StoredRegion", "STORE_MAX_BYTES", "why_not_storable"]

STORE_MAX_BYTES = 1 << 30   # unused copies kept for later starts (copies in use do not count)
_TMP_PREFIX = ".tmp-"
_KEY = struct.Struct("<6q")  # FileKey, as hashed
_PRUNE_WAIT = 2.0
_TOUCH_AFTER = 3600.0  # seconds: how stale a copy's use stamp may get before it is renewed


def why_not_storable(st: os.stat_result) -> str | None:
    """Why a source file is copied into pool blocks rather than into the store, or None."""
    if st.st_uid != os.geteuid():
        return f"it belongs to uid {st.st_uid}, not to us"
    if st.st_mode & 0o022:
        return f"its mode {stat.S_IMODE(st.st_mode):04o} lets group or others write it"
    return None


class StoredRegion:
    """One copy in the store, open and share-locked while this coordinator serves it; ``close()``
    (idempotent; also when collected) releases the lock, and the copy becomes prunable."""

    __slots__ = ("path", "fd", "stat", "digest", "_finalizer", "__weakref__")

    def __init__(self, path: Path, fd: int, st: os.stat_result, digest: bytes) -> None:
        self.path, self.fd, self.stat, self.digest = path, fd, st, digest
        self._finalizer = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


class RegionStore:
    """The copies of one runtime folder's store (``folder`` for tests: the default is the one
    readers resolve, substrate.mapped_files.store_dir())."""

    def __init__(self, folder: Path | None = None, *, max_bytes: int = STORE_MAX_BYTES) -> None:
        self.folder = folder if folder is not None else store_dir()
        self.max_bytes = max_bytes
        self.added = 0
        try:
            self.folder.mkdir(mode=0o700, exist_ok=True)
        except FileExistsError:
            pass  # not a folder: every open below fails and the files are copied as before

    @staticmethod
    def digest(key: FileKey) -> bytes:
        return hashlib.blake2b(_KEY.pack(*key), digest_size=16, person=b"shmpool-store-1").digest()

    def open(self, key: FileKey) -> StoredRegion | None:
        """The verified copy of the source with ``key``, share-locked; None if there is none.

        A copy that is no longer safe to map (its mode or owner changed) is removed: the next
        :meth:`add` makes it again."""
        digest = self.digest(key)
        path = file_path(digest, self.folder)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                raise OSError("being linked into the store right now")  # by another coordinator's add()
            why = why_unsafe(st) or (None if st.st_size == key.size else f"has {st.st_size} bytes, not {key.size}")
            if why is not None:
                logger.warning("region store: {} {}; removing it (it is made again from its source)", path, why)
                _unlink(path)
                os.close(fd)
                return None
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a pruner holds LOCK_EX only to remove it
            if os.stat(path, follow_symlinks=False).st_ino != st.st_ino:
                raise OSError("removed while being opened")
            if time.time() - st.st_mtime > _TOUCH_AFTER:
                os.utime(fd)  # recently used: pruned last (an inode write, so not at every start)
            return StoredRegion(path, fd, st, digest)
        except OSError as exc:
            logger.debug("region store: {} not used: {}", path, exc)
            os.close(fd)
            return None

    def add(self, src: RegionFile, key: FileKey, check: Callable[[memoryview], None]) -> StoredRegion | None:
        """Copy ``src`` into the store, ``check`` the copy in full, and open it; None (nothing
        stored) if the source is too young to key or changed meanwhile. Raises what ``check``
        raises for a corrupt file (RegionFormatError)."""
        if not key.settled(time.time_ns()):
            logger.debug("region store: {} changed too recently to be keyed; copied into the pools", src.path)
            return None
        try:
            # Made and locked under the prune lock: a pruner removes a temporary it can lock (a
            # killed copy's), and one between mkstemp and our flock took this one (another
            # coordinator starting at once; our link then failed). Ours from here: a pruner
            # leaves a temporary alone while we hold it.
            with self._prune_lock():
                fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=SUFFIX, dir=self.folder)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except Timeout:
            logger.info("region store {}: its prune lock is busy; {} copied into the pools", self.folder, src.path)
            return None
        try:
            _copy(src, fd)
            with mmap.mmap(fd, src.nbytes, access=mmap.ACCESS_READ) as mapping:
                view = memoryview(mapping)
                try:
                    check(view)
                finally:
                    view.release()
            if not src.unchanged():
                logger.info("{} changed while being copied into the region store; copied into the pools", src.path)
                return None
            os.fchmod(fd, 0o400)
            final = file_path(self.digest(key), self.folder)
            try:
                os.link(tmp, final)
                self.added += 1
            except FileExistsError:
                logger.debug("region store: {} was made meanwhile by another coordinator", final)
        finally:
            _unlink(Path(tmp))
            os.close(fd)
        return self.open(key)

    def discard(self, stored: StoredRegion) -> None:
        """Close ``stored`` and remove its copy from the store (found damaged)."""
        stored.close()
        _unlink(stored.path)

    def prune(self) -> None:
        """Remove unused copies past :data:`STORE_MAX_BYTES`, oldest used first, and temporaries
        of killed copies. Never raises: a store that cannot be pruned only takes more room."""
        try:
            with self._prune_lock():
                self._prune_locked()
        except (OSError, Timeout) as exc:
            logger.warning("region store {} not pruned: {}", self.folder, exc)

    def _prune_lock(self) -> FileLock:
        """Held by a prune, and by an add while it makes and locks its temporary."""
        return FileLock(str(self.folder) + ".lock", timeout=_PRUNE_WAIT, mode=0o600)

    def _prune_locked(self) -> None:
        unused: list[tuple[float, int, Path, int]] = []
        for path in self.folder.iterdir():
            if not path.name.endswith(SUFFIX):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # served by a coordinator, or being made: kept
                continue
            st = os.fstat(fd)
            if path.name.startswith(_TMP_PREFIX):
                _unlink(path)
                os.close(fd)
                continue
            unused.append((st.st_mtime, st.st_size, path, fd))
        kept = 0
        for _mtime, size, path, fd in sorted(unused, key=lambda u: u[0], reverse=True):
            kept += size
            if kept > self.max_bytes:
                logger.info("region store: removed {} ({} bytes, unused)", path, size)
                _unlink(path)  # under our LOCK_EX: nobody opened and locked it meanwhile
            os.close(fd)


def _copy(src: RegionFile, out: int) -> None:
    """The source's bytes into ``out``: copy_file_range (in the kernel; a reflink where the file
    system shares extents), else sendfile, else read/write."""
    done, total = 0, src.nbytes
    use_range = hasattr(os, "copy_file_range")
    while done < total:
        try:
            if use_range:
                sent = os.copy_file_range(src.fd, out, total - done, done, done)
            elif SENDFILE:
                os.lseek(out, done, os.SEEK_SET)
                sent = os.sendfile(out, src.fd, done, total - done)
            else:
                chunk = os.pread(src.fd, min(total - done, 1 << 20), done)
                sent = os.pwrite(out, chunk, done)
        except OSError as exc:
            if use_range and exc.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                use_range = False
                continue
            raise
        if sent == 0:
            raise RegionFormatError(source=src.path, offset=done, fault=f"shrank to {done} bytes while being copied")
        done += sent


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError as exc:
        logger.debug("could not remove {}: {}", path, exc)
