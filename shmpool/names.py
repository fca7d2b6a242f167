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
    """
    segments, semaphores = list_objects(name)
    removed: list[str] = []
    for seg in segments:
        try:
            posix_ipc.unlink_shared_memory(seg)
            removed.append(seg)
        except posix_ipc.ExistentialError:
            logger.debug("segment {} vanished before cleanup reached it", seg)
    for sem in semaphores:
        try:
            posix_ipc.unlink_semaphore(sem)
            removed.append(sem)
        except posix_ipc.ExistentialError:
            logger.debug("semaphore {} vanished before cleanup reached it", sem)
    if removed:
        logger.info("cleanup of instance {!r} removed {}", name, ", ".join(removed))
    return removed
