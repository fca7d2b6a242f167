"""Names of an instance's shared objects, and the sweep that removes all of them.

Every segment and semaphore of instance NAME is called ``/shmpool.NAME.<kind>``. One prefix per
instance means two instances never collide, and ``cleanup(NAME)`` can find everything a crashed
instance left behind by listing /dev/shm (where Linux shows segments as ``shmpool.NAME.*`` and
semaphores as ``sem.shmpool.NAME.*``).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import posix_ipc
from ._log import logger

from ..errors import CleanupError, InvalidArgument, UnsafeRuntimeDir, UntrustedObject
from .trust import SHM_DIR, is_ours, sem_path, shm_path

__all__ = ["validate_name", "segment_name", "semaphore_name", "runtime_dir", "list_objects", "foreign_objects",
           "raise_if_foreign", "cleanup", "instance_names", "newest_change", "coordinator_lock_path"]

PREFIX = "shmpool."
# Dots separate the prefix, the instance and the kind, so they are not allowed in the instance
# name; 48 characters keeps whole names far below NAME_MAX (255) on Linux.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid instance name, else raise InvalidArgument (a ValueError) saying why."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidArgument(argument="name", value=name,
                              reason="invalid shmpool instance name: use 1-48 characters from A-Z a-z 0-9 _ -, "
                                     "starting with a letter or digit")
    return name


def segment_name(name: str, kind: str) -> str:
    return f"/{PREFIX}{name}.{kind}"


def semaphore_name(name: str, kind: str) -> str:
    return f"/{PREFIX}{name}.{kind}"


def runtime_dir() -> Path:
    """Per-user folder for lock files, the built sample and spills (created 0700 on first use).

    ``SHMPOOL_RUNTIME_DIR`` when set (the tests point it at a temporary folder), else
    ``$XDG_RUNTIME_DIR/shmpool`` when that folder is usable (ours, 0700: the XDG rule), else
    ``/tmp/shmpool-<euid>``. Raises UnsafeRuntimeDir if the folder is a symlink, not a folder, not
    ours, or writable by group or others: whoever can write there can poison the sample, swap a
    spilled region or hold our lock files. Nothing inside needs a symlink check once the folder
    itself is ours alone, because nobody else can create entries in it.

    Lock files stay after a stop on purpose: unlinking a file that another process has opened but
    not yet locked would let two processes each hold "the" lock on different inodes. They are empty.
    Every process of an instance must resolve the same folder (same environment), since the
    instance's locks are flocks on files in it (shmpool.substrate.lock).
    """
    override = os.environ.get("SHMPOOL_RUNTIME_DIR")
    if override:
        path = Path(override)
    else:
        xdg = _usable_xdg_runtime_dir()
        path = xdg / "shmpool" if xdg is not None else _fallback_dir()
    return _own_folder(path)


def coordinator_lock_path(name: str) -> Path:
    """The file a coordinator of instance ``name`` holds flock'd for its whole life (one per name)."""
    return runtime_dir() / f"{validate_name(name)}.coordinator.lock"


_warned_xdg: set[str] = set()


def _temp_dir() -> str:
    # tempfile (with shutil, random, bz2, lzma) only where the fallback is used: ~3 ms of the
    # start of every reader, worker and CLI call otherwise (SHMPOOL_RUNTIME_DIR or XDG set).
    import tempfile
    return tempfile.gettempdir()


def _fallback_dir() -> Path:
    """The runtime folder without SHMPOOL_RUNTIME_DIR or a usable XDG_RUNTIME_DIR."""
    return Path(_temp_dir()) / f"shmpool-{os.geteuid()}"


def _usable_xdg_runtime_dir() -> Path | None:
    value = os.environ.get("XDG_RUNTIME_DIR")
    if not value:
        return None
    path = Path(value)
    try:
        st = os.stat(path, follow_symlinks=False)
        usable = (path.is_absolute() and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
                  and not st.st_mode & 0o077)
    except OSError:
        usable = False
    if not usable and value not in _warned_xdg:
        # Typical after `su`: the variable still names the previous user's folder.
        _warned_xdg.add(value)
        logger.warning("XDG_RUNTIME_DIR={} is not a 0700 folder of uid {}; using {} instead", value,
                       os.geteuid(), _fallback_dir())
    return path if usable else None


def _own_folder(path: Path) -> Path:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            logger.debug("runtime folder {} appeared while being created; checking it", path)
        st = os.stat(path, follow_symlinks=False)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        reason = "it is a symlink, and a runtime folder is never followed through one"
    elif not stat.S_ISDIR(st.st_mode):
        reason = "it is not a folder"
    elif st.st_uid != os.geteuid():
        reason = f"it belongs to another user, not to uid {os.geteuid()}"
    elif mode & 0o022:
        reason = "group or others may write into it"
    else:
        return path
    raise UnsafeRuntimeDir(path=str(path), owner_uid=st.st_uid, mode=mode, reason=reason)


def list_objects(name: str) -> tuple[list[str], list[str]]:
    """(segment names, semaphore names) of instance ``name`` that exist now, as posix_ipc names."""
    validate_name(name)
    stem = f"{PREFIX}{name}."
    segments: list[str] = []
    semaphores: list[str] = []
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return segments, semaphores
    for entry in entries:
        if entry.startswith(stem):
            segments.append("/" + entry)
        elif entry.startswith("sem." + stem):
            semaphores.append("/" + entry[len("sem."):])
    return sorted(segments), sorted(semaphores)


def instance_names(prefix: str = "") -> list[str]:
    """Every instance name starting with ``prefix`` that has a segment or a semaphore now."""
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    found = set()
    for entry in entries:
        stem = entry[len("sem."):] if entry.startswith("sem.") else entry
        if stem.startswith(PREFIX + prefix):
            # The instance name has no dots (validate_name), so it ends at the next one.
            found.add(stem[len(PREFIX):].split(".", 1)[0])
    return sorted(found)


def newest_change(name: str) -> float | None:
    """The latest status-change time (st_ctime) of instance ``name``'s objects, None if it has none."""
    segments, semaphores = list_objects(name)
    times = []
    for path in [shm_path(s) for s in segments] + [sem_path(s) for s in semaphores]:
        try:
            times.append(os.stat(path, follow_symlinks=False).st_ctime)
        except FileNotFoundError:
            continue
    return max(times, default=None)


def foreign_objects(name: str) -> list[tuple[str, os.stat_result]]:
    """(path, stat) of every object named for instance ``name`` that another user owns."""
    segments, semaphores = list_objects(name)
    found = []
    for path in [shm_path(s) for s in segments] + [sem_path(s) for s in semaphores]:
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not is_ours(st):
            found.append((str(path), st))
    return found


def raise_if_foreign(name: str) -> None:
    """Raise UntrustedObject naming the owner if another user holds any object under ``name``."""
    found = foreign_objects(name)
    if found:
        path, st = found[0]
        raise UntrustedObject(name=name, path=path, owner_uid=st.st_uid, mode=stat.S_IMODE(st.st_mode),
                              expected_uid=os.geteuid())


def cleanup(name: str) -> list[str]:
    """Unlink every segment and semaphore of instance ``name`` that is ours; return what was removed.

    Meant for the leftovers of a crashed instance (``shmpool cleanup NAME``). Running it against a
    live instance pulls the ground from under it: the coordinator checks liveness before calling it.
    Another user's objects under the name are left alone (even as root: the sweep removes
    leftovers, it does not arbitrate between users); see :func:`foreign_objects`. Raises
    CleanupError, after removing everything it can, naming what it left and why.
    """
    segments, semaphores = list_objects(name)
    foreign = {path for path, _ in foreign_objects(name)}
    removed: list[str] = []
    failed: list[tuple[str, str]] = []
    for obj, unlink, path in [*((s, posix_ipc.unlink_shared_memory, shm_path(s)) for s in segments),
                              *((s, posix_ipc.unlink_semaphore, sem_path(s)) for s in semaphores)]:
        if str(path) in foreign:
            failed.append((obj, _why_not(path, None)))
            continue
        try:
            unlink(obj)
            removed.append(obj)
        except posix_ipc.ExistentialError:
            logger.debug("{} vanished before cleanup reached it", obj)
        except posix_ipc.Error as exc:
            failed.append((obj, _why_not(path, exc)))
    if removed:
        # A count at INFO: a crashed instance with clients leaves hundreds of names (266 seen).
        logger.info("cleanup of instance {!r} removed {} objects", name, len(removed))
        logger.debug("cleanup of instance {!r} removed {}", name, ", ".join(removed))
    if failed:
        raise CleanupError(name=name, failed=failed, removed=removed)
    return removed


def _why_not(path: Path, exc: Exception | None) -> str:
    """The reason an object was not removed, with its owner when that is the reason."""
    if exc is not None and not isinstance(exc, posix_ipc.PermissionsError):
        return str(exc)
    try:
        owner = os.stat(path, follow_symlinks=False).st_uid
    except OSError:
        return f"permission denied; this process is uid {os.geteuid()}"
    return f"permission denied: owned by uid {owner}, this process is uid {os.geteuid()}"
