"""Names of an instance's shared objects, and the sweep that removes all of them.

Every segment and semaphore of instance NAME is called ``/shmpool.NAME.<kind>``. One prefix per
instance means two instances never collide, and ``cleanup(NAME)`` can find everything a crashed
instance left behind by listing /dev/shm (where Linux shows segments as ``shmpool.NAME.*`` and
semaphores as ``sem.shmpool.NAME.*``).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import posix_ipc
from loguru import logger

from .errors import CleanupError

__all__ = ["validate_name", "segment_name", "semaphore_name", "runtime_dir", "list_objects", "cleanup"]

PREFIX = "shmpool."
SHM_DIR = Path("/dev/shm")
# Dots separate the prefix, the instance and the kind, so they are not allowed in the instance
# name; 48 characters keeps whole names far below NAME_MAX (255) on Linux.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid instance name, else raise ValueError saying why."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid shmpool instance name {name!r}: use 1-48 characters from A-Z a-z 0-9 _ -, "
            "starting with a letter or digit"
        )
    return name


def segment_name(name: str, kind: str) -> str:
    return f"/{PREFIX}{name}.{kind}"


def semaphore_name(name: str, kind: str) -> str:
    return f"/{PREFIX}{name}.{kind}"


def runtime_dir() -> Path:
    """Per-user folder for the lock files of all instances (created 0700 on first use).

    Lock files stay after a stop on purpose: unlinking a file that another process has opened but
    not yet locked would let two processes each hold "the" lock on different inodes. They are empty.
    ``SHMPOOL_RUNTIME_DIR`` overrides the place (the tests point it at a temporary folder).
    """
    override = os.environ.get("SHMPOOL_RUNTIME_DIR")
    path = Path(override) if override else Path(tempfile.gettempdir()) / f"shmpool-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


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


def cleanup(name: str) -> list[str]:
    """Unlink every segment and semaphore of instance ``name``; return what was removed.

    Meant for the leftovers of a crashed instance (``shmpool cleanup NAME``). Running it against a
    live instance pulls the ground from under it: the coordinator checks liveness before calling it.
    Raises CleanupError, after removing everything it can, if some objects cannot be removed
    (another user's: /dev/shm is sticky, so only their owner or root may unlink them).
    """
    segments, semaphores = list_objects(name)
    removed: list[str] = []
    failed: list[tuple[str, str]] = []
    for obj, unlink, entry in [*((s, posix_ipc.unlink_shared_memory, s[1:]) for s in segments),
                               *((s, posix_ipc.unlink_semaphore, "sem." + s[1:]) for s in semaphores)]:
        try:
            unlink(obj)
            removed.append(obj)
        except posix_ipc.ExistentialError:
            logger.debug("{} vanished before cleanup reached it", obj)
        except posix_ipc.Error as exc:
            failed.append((obj, _why_not(entry, exc)))
    if removed:
        logger.info("cleanup of instance {!r} removed {}", name, ", ".join(removed))
    if failed:
        raise CleanupError(name=name, failed=failed, removed=removed)
    return removed


def _why_not(entry: str, exc: Exception) -> str:
    """The reason an unlink failed, with the owner when that is the reason."""
    if not isinstance(exc, posix_ipc.PermissionsError):
        return str(exc)
    try:
        owner = os.stat(SHM_DIR / entry).st_uid
    except OSError:
        return f"permission denied; this process is uid {os.geteuid()}"
    return f"permission denied: owned by uid {owner}, this process is uid {os.geteuid()}"
