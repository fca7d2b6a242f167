"""Removing an instance's names from /dev/shm as systemd-logind's RemoveIPC=yes does."""

from __future__ import annotations

import os

from shmpool.substrate.trust import SHM_DIR


def remove_names(name: str) -> list[str]:
    """What RemoveIPC does: unlink every /dev/shm entry of the instance, semaphores included."""
    removed = []
    for entry in os.listdir(SHM_DIR):
        if entry.startswith((f"shmpool.{name}.", f"sem.shmpool.{name}.")):
            os.unlink(SHM_DIR / entry)
            removed.append(entry)
    return removed
