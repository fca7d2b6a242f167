"""Which /dev/shm names no live process holds: what tests/conftest.py blames on a test module.

Any name, not just shmpool's: libraries the tests drive (multiprocessing's ``sem.mp-*``
semaphores, ``psm_*`` segments) leak too when a test kills the process that would unlink them.

A name is held while a live process maps it, matched by inode rather than by path: glibc's
sem_open builds a semaphore under a temporary name, maps it, then links it to its real name, so
its creator's /proc/PID/maps shows ``/dev/shm/sem.XXXXXX (deleted)``, never ``sem.mp-...``.
A name is also held while another name of its group (the stem before the last dot: one shmpool
instance, ``shmpool.NAME.*``) is mapped: shmpool creates its channel semaphores and closes them
until a client needs one, so a live instance always has unmapped names.
"""

from __future__ import annotations

import os
import time

from shmpool.substrate.names import SHM_DIR

SETTLE = 0.5  # seconds: a creator between shm_open and mmap, or an owner mid-unlink, is done by then


def stem(name: str) -> str:
    """The group of ``name``: ``sem.shmpool.X.ch3`` and ``shmpool.X.control`` are both ``shmpool.X``."""
    bare = name[4:] if name.startswith("sem.") else name
    return bare.rsplit(".", 1)[0]


def mapped_inodes(pids=None) -> set[int]:
    """Inodes of /dev/shm files that processes ``pids`` (default: every live one) map."""
    dev = os.stat(SHM_DIR).st_dev
    # /proc/PID/maps prints the device as %02x:%02x; a process in a private mount namespace
    # (tests/test_small_shm.py) maps another tmpfs whose inode numbers mean nothing here.
    ours = f"{os.major(dev):02x}:{os.minor(dev):02x}".encode()
    held: set[int] = set()
    for pid in (os.listdir("/proc") if pids is None else map(str, pids)):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                data = f.read()
        except OSError:  # exited meanwhile
            continue
        if b" /dev/shm/" not in data:
            continue
        for line in data.splitlines():
            if b" /dev/shm/" in line:
                fields = line.split(None, 5)
                if fields[3] == ours:
                    held.add(int(fields[4]))
    return held


def held_by(pids) -> list[str]:
    """The /dev/shm names processes ``pids`` map, including those they created (see above)."""
    inodes = mapped_inodes(pids)
    with os.scandir(SHM_DIR) as entries:
        return sorted(e.name for e in entries if e.inode() in inodes)


def _unheld(names) -> list[str]:
    held = mapped_inodes()
    with os.scandir(SHM_DIR) as entries:  # d_ino is the inode on tmpfs: no stat per entry
        present = {e.name: e.inode() for e in entries}
    held_stems = {stem(n) for n, ino in present.items() if ino in held}
    return sorted(n for n in names if n in present and present[n] not in held and stem(n) not in held_stems)


def orphans(names, settle: float = SETTLE) -> list[str]:
    """Those of ``names`` still in /dev/shm that nobody holds, now and ``settle`` seconds later."""
    found = _unheld(names)
    if found and settle:
        time.sleep(settle)
        found = _unheld(found)
    return found
