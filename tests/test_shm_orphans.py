"""The conftest's leak check: a /dev/shm name counts as left behind exactly when nobody holds it."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import secrets
import subprocess
import sys

import posix_ipc

import _shm_orphans
from conftest import TEST_PREFIX
from shmpool.substrate.names import SHM_DIR


def _unique(kind: str) -> str:
    return f"orph-{TEST_PREFIX}{secrets.token_hex(4)}.{kind}"


def test_a_semaphore_is_held_while_open_and_an_orphan_once_closed():
    name = _unique("sem")
    sem = posix_ipc.Semaphore("/" + name, posix_ipc.O_CREX, mode=0o600)
    try:
        assert _shm_orphans.orphans(["sem." + name], settle=0) == []
        sem.close()
        assert _shm_orphans.orphans(["sem." + name], settle=0) == ["sem." + name]
    finally:
        posix_ipc.unlink_semaphore("/" + name)
    assert _shm_orphans.orphans(["sem." + name], settle=0) == [], "a name that is gone is no orphan"


def test_a_multiprocessing_lock_is_held_by_its_creator_though_maps_shows_a_temporary_name():
    lock = mp.get_context("spawn").Lock()
    name = "sem." + lock._semlock.name.lstrip("/")
    assert (SHM_DIR / name).exists()
    assert _shm_orphans.orphans([name], settle=0) == []
    del lock  # its finalizer unlinks the name
    assert not (SHM_DIR / name).exists()


def test_a_killed_creator_leaves_an_orphan_and_a_mapped_sibling_keeps_its_group_held():
    stem = f"orph-{TEST_PREFIX}{secrets.token_hex(4)}"
    code = ("import os, posix_ipc, signal, sys; "
            f"posix_ipc.Semaphore('/{stem}.ch0', posix_ipc.O_CREX, mode=0o600); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    orphan = f"sem.{stem}.ch0"
    try:
        assert _shm_orphans.orphans([orphan], settle=0) == [orphan]
        # A live instance's closed channel semaphore: its control segment is mapped, so it is held.
        seg = posix_ipc.SharedMemory(f"/{stem}.control", posix_ipc.O_CREX, mode=0o600, size=4096)
        mm = mmap.mmap(seg.fd, 4096)
        seg.close_fd()
        try:
            assert _shm_orphans.stem(orphan) == _shm_orphans.stem(f"{stem}.control")
            assert _shm_orphans.orphans([orphan, f"{stem}.control"], settle=0) == []
        finally:
            mm.close()
            seg.unlink()
        assert _shm_orphans.orphans([orphan], settle=0) == [orphan]
    finally:
        posix_ipc.unlink_semaphore(f"/{stem}.ch0")
