"""The validation cache: which region files already had every content checksum verified.

Verifying a region's content (CRC32 of every layer, UTF-8 of every text layer) is most of a cold
start-up (~29 ms of ~62 for the 14-dimension sample). A file that has not changed since it was
verified need not be verified again, so after a full verification the coordinator records the
file's identity here and, on the next start, trusts an identical file's content checksums. The
structure (header, metadata CRC over header + index, bounds) is still checked on every load.

What "identical" means, and why it is enough: a record holds the file's ``(st_dev, st_ino,
st_size, st_mtime_ns, st_ctime_ns)`` and the metadata CRC of its header. Any write to a file
changes its ctime, and ctime is the one stamp a user cannot set back (``os.utime`` sets mtime
and atime, and bumps ctime); replacing the file (``os.replace``) changes the inode. Two limits,
both handled by not recording: a write within the same timestamp tick as the verification would
leave ctime unchanged, so a file whose ctime is younger than :data:`RACY_NS` (2 s on file
systems with whole-second stamps) is verified but not recorded (git's "racy timestamp" rule);
and a file whose stat changed while it was being verified is not recorded. What the cache does
NOT defend against: root setting the clock back and rewriting the file, or a network file
system whose server clock lags ours by more than RACY_NS. Layer CRCs stay in the file either
way, so ``LoadedContext.verify()`` and ``Region.verify_checksums()`` still check on demand.

Safety of the cache file itself: it lives in the runtime folder (ours alone, 0700), is written
0600 by a rename of a complete temporary file (never torn), is opened ``O_NOFOLLOW`` and used
only if it is ours with no group/other bits, and is JSON (never unpickled). A missing, corrupt,
foreign or loose file is ignored with one log line: the files are then verified, never refused.
Concurrent coordinators merge their records under an flock'd side file; records are pruned to
files whose identity still matches, at most :data:`MAX_RECORDS`, most recently verified first.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from filelock import FileLock, Timeout
from shmpool.substrate._log import logger

from shmpool.substrate import _faults
from shmpool.substrate.names import runtime_dir
from shmpool.substrate.trust import is_ours

__all__ = ["FileKey", "VerifiedFiles", "CACHE_FILE", "MAX_RECORDS", "RACY_NS", "default_cache_path"]

CACHE_FILE = "verified-regions.json"
FORMAT = 1
MAX_RECORDS = 1024        # a bounded file: pruning stats each record once per save (~3 µs each)
RACY_NS = 50_000_000      # > one kernel tick (file stamps come from a coarse clock, 1-10 ms)
COARSE_RACY_NS = 2_000_000_000  # file systems that store whole seconds (ext3, HFS+, FAT's 2 s)
SAVE_WAIT = 2.0           # seconds a save waits for another coordinator's save (each takes ~1 ms)
_LOOSE_BITS = 0o077
_MAX_BYTES = 4 << 20      # a cache file larger than this is not ours to parse


class FileKey(NamedTuple):
    """What a record must match, field for field, for a file's content checks to be skipped."""
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    meta_crc: int  # the header's CRC of header + name + keywords + index

    @classmethod
    def of(cls, st: os.stat_result, meta_crc: int) -> "FileKey":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, meta_crc)

    def same_file(self, st: os.stat_result) -> bool:
        """Whether ``st`` is still exactly this file (the header CRC aside)."""
        return self[:5] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def settled(self, now_ns: int) -> bool:
        """Whether a later write is sure to change ctime: the stamp's tick is well over."""
        coarse = self.ctime_ns % 1_000_000_000 == 0
        return self.ctime_ns + (COARSE_RACY_NS if coarse else RACY_NS) < now_ns


def default_cache_path() -> Path:
    """``<runtime dir>/verified-regions.json`` (runtime_dir() checks the folder is ours alone)."""
    return runtime_dir() / CACHE_FILE


@dataclass
class VerifiedFiles:
    """The records of one cache file, read once at start, merged back by :meth:`save`.

    Not thread-safe (one loader uses it). ``hits``/``misses`` count lookups, ``recorded`` the
    files newly recorded: how tests and ``stats()`` see that a hit skipped verification.
    """

    path: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    recorded: int = 0
    ignored: str | None = None  # why the file on disk was not used, if it was not
    _new: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> "VerifiedFiles":
        """Read the cache at ``path`` (default :func:`default_cache_path`). Never raises for its
        content: anything wrong with it is logged and the cache starts empty."""
        cache = cls(Path(path) if path is not None else default_cache_path())
        records, why = _read(cache.path)
        if why is not None:
            cache.ignored = why
            logger.warning("validation cache {} ignored ({}): region files will be verified in full",
                           cache.path, why)
        cache.records = records
        return cache

    def is_verified(self, path: str, key: FileKey) -> bool:
        """Whether ``path`` was verified in full while it had exactly ``key``."""
        record = self.records.get(path)
        hit = record is not None and tuple(record.get("key", ())) == tuple(key)
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        return hit

    def record(self, path: str, key: FileKey, *, verified_ns: int) -> bool:
        """Remember that ``path`` with ``key`` passed every content check; False (not recorded)
        if its ctime is too recent to rule out an unseen write in the same tick."""
        if not key.settled(verified_ns):
            logger.debug("{} not recorded as verified: changed {:.0f} ms before the verification",
                         path, (verified_ns - key.ctime_ns) / 1e6)
            return False
        entry = {"key": list(key), "verified_ns": verified_ns}
        self.records[path] = self._new[path] = entry
        self.recorded += 1
        return True

    def save(self) -> None:
        """Merge the new records into the file on disk (under its lock), prune, write atomically.

        Nothing to do if nothing was recorded. Failures are logged, never raised: a cache that
        cannot be written costs the next start a verification, nothing else."""
        if not self._new:
            return
        try:
            with FileLock(str(self.path) + ".lock", timeout=SAVE_WAIT, mode=0o600):
                _remove_stale_temporaries(self.path)
                on_disk, _why = _read(self.path)  # another coordinator may have saved meanwhile
                on_disk.update(self._new)
                _write(self.path, _prune(on_disk))
            self._new.clear()
        except (OSError, Timeout) as exc:
            logger.warning("validation cache {} not saved: {}", self.path, exc)


def _read(path: Path) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The records of the cache file, or ({}, why not)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"cannot open: {exc.strerror or exc}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return {}, "not a regular file"
        if not is_ours(st):
            return {}, f"owned by uid {st.st_uid}, not by us (uid {os.geteuid()})"
        if st.st_mode & _LOOSE_BITS:
            return {}, f"mode {stat.S_IMODE(st.st_mode):04o} lets others write it"
        if st.st_size > _MAX_BYTES:
            return {}, f"{st.st_size} bytes, larger than a cache of {MAX_RECORDS} records can be"
        raw = os.read(fd, _MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        return {}, f"not valid JSON ({type(exc).__name__}: {exc})"
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("records"), dict):
        return {}, f"not a format-{FORMAT} validation cache"
    records = {p: r for p, r in doc["records"].items() if _well_formed(r)}
    if len(records) != len(doc["records"]):
        return records, f"{len(doc['records']) - len(records)} malformed record(s) dropped"
    return records, None


def _well_formed(record: object) -> bool:
    if not isinstance(record, dict):
        return False
    key, when = record.get("key"), record.get("verified_ns")
    return (isinstance(key, list) and len(key) == len(FileKey._fields)
            and all(type(k) is int for k in key) and type(when) is int)


def _prune(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Only records whose file is still exactly that file, newest MAX_RECORDS first."""
    alive = {}
    for path, record in records.items():
        try:
            st = os.stat(path)
        except OSError:
            continue
        if FileKey(*record["key"]).same_file(st):
            alive[path] = record
    newest = sorted(alive.items(), key=lambda item: item[1]["verified_ns"], reverse=True)[:MAX_RECORDS]
    return dict(newest)


def _remove_stale_temporaries(path: Path) -> None:
    """Temporaries of savers killed before their rename (called under the lock, so no live
    saver has one in flight)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stale.unlink()
            logger.debug("removed {} left by a killed save", stale)
        except OSError as exc:
            logger.debug("could not remove {}: {}", stale, exc)


def _write(path: Path, records: dict[str, dict[str, Any]]) -> None:
    # No fsync: a cache lost in a power cut costs one verification; the rename alone guarantees
    # that readers see the old file or the new one, never a torn one.
    data = json.dumps({"format": FORMAT, "written_ns": time.time_ns(), "records": records},
                      separators=(",", ":")).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.close(fd)
        fd = -1
        if _faults.ARMED:
            _faults.point("verified.written")
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError as exc:
            logger.debug("could not remove temporary file {}: {}", tmp, exc)
        raise
