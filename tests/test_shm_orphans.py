"""The conftest's leak check: a /dev/shm name counts as left behind exactly when nobody holds it,
a worker judges only its own test names (and names of no test), and a session sweeps only the dead
instances of sessions whose worker died."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import secrets
import subprocess
import sys

import posix_ipc

import _shm_orphans
import _test_names
from conftest import ME, TEST_PREFIX, _judged_here as judged_here, _remove_orphans_among as remove_orphans_among
from shmpool.substrate.names import PREFIX
from shmpool.substrate.trust import SHM_DIR


def _unique(kind: str) -> str:
    return f"orph-{TEST_PREFIX}{secrets.token_hex(4)}.{kind}"


def test_a_semaphore_is_held_while_open_and_an_orphan_once_closed() -> None:
    name = _unique("sem")
    sem = posix_ipc.Semaphore("/" + name, posix_ipc.O_CREX, mode=0o600)
    try:
        assert _shm_orphans.orphans(["sem." + name], settle=0) == []
        sem.close()
        assert _shm_orphans.orphans(["sem." + name], settle=0) == ["sem." + name]
    finally:
        posix_ipc.unlink_semaphore("/" + name)
    assert _shm_orphans.orphans(["sem." + name], settle=0) == [], "a name that is gone is no orphan"


def test_a_multiprocessing_lock_is_held_by_its_creator_though_maps_shows_a_temporary_name() -> None:
    lock = mp.get_context("spawn").Lock()
    name = "sem." + lock._semlock.name.lstrip("/")  # type: ignore[attr-defined]
    assert (SHM_DIR / name).exists()
    assert _shm_orphans.orphans([name], settle=0) == []
    del lock  # its finalizer unlinks the name
    assert not (SHM_DIR / name).exists()


def test_a_killed_creator_leaves_an_orphan_and_a_mapped_sibling_keeps_its_group_held() -> None:
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


# ----------------------------------------------------------------------------- whose names a worker judges

def _dead_instance(name: str) -> str:
    """What a coordinator killed before writing its header leaves: a control segment nobody maps."""
    seg = posix_ipc.SharedMemory(f"/{PREFIX}{name}.control", posix_ipc.O_CREX, mode=0o600, size=4096)
    seg.close_fd()
    return f"{PREFIX}{name}.control"


def test_a_worker_judges_only_its_own_test_names_and_names_of_no_test() -> None:
    other_worker = _test_names.Owner(ME.session, ME.worker + "x")
    other_session = _test_names.Owner("zz" + secrets.token_hex(3), ME.worker)
    assert _test_names.owner(f"sem.{PREFIX}{TEST_PREFIX}ab12.lock") == ME
    assert _test_names.owner(f"{PREFIX}{other_worker.prefix}ab12.control") == other_worker
    assert judged_here(f"{PREFIX}{TEST_PREFIX}ab12.control")
    assert not judged_here(f"sem.{PREFIX}{other_worker.prefix}ab12.lock")
    assert not judged_here(f"{PREFIX}{other_session.prefix}ab12.control")
    assert judged_here("sem.mp-k2j3h4l5") and judged_here("psm_1a2b3c")
    # A script's instance: the script checks its own names; it may be another developer's run.
    assert not judged_here(f"{PREFIX}bench-alloc-1234.control") and not judged_here(f"sem.{PREFIX}chaos-ab.lock")


def test_another_workers_killed_instance_is_left_to_it_and_ours_is_removed() -> None:
    # The defect: gw0's module check removed gw1's deliberately killed instance while gw1's test
    # was still inspecting it (`shmpool health`, then `shmpool cleanup`).
    theirs = _dead_instance(f"{_test_names.Owner(ME.session, ME.worker + 'x').prefix}{secrets.token_hex(4)}")
    ours = _dead_instance(f"{TEST_PREFIX}{secrets.token_hex(4)}")
    try:
        new = [theirs, ours]
        assert _shm_orphans.orphans(new, settle=0) == sorted(new), "both are orphans"
        assert remove_orphans_among([e for e in new if judged_here(e)]) == [ours]
        assert (SHM_DIR / theirs).exists() and not (SHM_DIR / ours).exists()
    finally:
        for entry in (theirs, ours):
            (SHM_DIR / entry).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- sessions that died

def test_only_the_dead_instances_of_a_session_whose_worker_died_are_swept() -> None:
    live, dead, unknown = (_test_names.Owner("zz" + secrets.token_hex(3), "gw0") for _ in range(3))
    held = _test_names.hold_session_lock(live)
    _test_names.release_session_lock(dead, _test_names.hold_session_lock(dead))
    _test_names._lock_path(dead).touch()  # a worker killed outright never removes its lock file
    entries = {who: _dead_instance(f"{who.prefix}{secrets.token_hex(4)}") for who in (live, dead, unknown)}
    try:
        assert _test_names.session_alive(live) is True
        assert _test_names.session_alive(dead) is False
        assert _test_names.session_alive(unknown) is None
        removed = _test_names.sweep_dead_sessions(ME, min_age=0, among={live, dead, unknown})
        assert removed == [entries[dead][len(PREFIX):-len(".control")]]
        assert not (SHM_DIR / entries[dead]).exists() and not _test_names._lock_path(dead).exists()
        # A session still running may be inspecting its dead instance on purpose; one of an older
        # conftest (no lock file) is left until nothing of it changed for STALE_AGE.
        assert (SHM_DIR / entries[live]).exists() and (SHM_DIR / entries[unknown]).exists()
    finally:
        _test_names.release_session_lock(live, held)
        for entry in entries.values():
            (SHM_DIR / entry).unlink(missing_ok=True)
