"""A clean stop removes what the instance made in the runtime folder (lock files, an empty spill
folder), and taking the name lock is safe against a holder removing its file meanwhile."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.coordinator import name_lock
from shmpool.coordinator.name_lock import NameLock


def _runtime() -> Path:
    return Path(os.environ["SHMPOOL_RUNTIME_DIR"])


def _files_of(name: str) -> list[str]:
    return sorted(p.name for p in _runtime().iterdir() if p.name.startswith(name + "."))


def test_a_clean_stop_leaves_nothing_of_the_instance_in_the_runtime_folder(instance_name):
    with Coordinator(instance_name, workers=1) as coord:
        with shmpool.connect(instance_name) as client:
            assert client.submit("ping").result(30)
        assert f"{instance_name}.coordinator.lock" in _files_of(instance_name)  # held while it runs
        assert coord.stats()["workers"]["count"] == 1
    assert _files_of(instance_name) == []


def test_a_second_start_of_the_name_after_a_clean_stop_works(instance_name):
    for _ in range(2):
        with Coordinator(instance_name, workers=0):
            with shmpool.attach(instance_name):
                pass
    assert _files_of(instance_name) == []


def test_cleanup_after_a_crash_removes_the_crashed_instances_files(instance_name, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "shmpool", "serve", instance_name, "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and "serving" in proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert _files_of(instance_name), "a killed coordinator leaves its lock files"
    result = subprocess.run([sys.executable, "-m", "shmpool", "cleanup", instance_name], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert _files_of(instance_name) == []


def test_a_lock_taken_on_a_file_its_holder_removed_meanwhile_is_taken_again_on_the_new_file(tmp_path, monkeypatch):
    path = tmp_path / "x.coordinator.lock"
    holder = NameLock(path)
    assert holder.try_acquire()
    real_flock = fcntl.flock
    raced = []

    def flock(fd: int, operation: int) -> None:
        if not raced:  # between the newcomer's open and its flock, the holder stops cleanly
            raced.append(True)
            holder.release(remove=True)
        real_flock(fd, operation)

    monkeypatch.setattr(name_lock.fcntl, "flock", flock)
    newcomer = NameLock(path)
    assert newcomer.try_acquire() and raced
    monkeypatch.undo()
    assert os.path.samestat(os.stat(path), os.fstat(newcomer._fd))  # it holds the file at the path
    assert not NameLock(path).try_acquire()  # so a third contends with it, not with a dead inode
    newcomer.release(remove=True)
    assert not path.exists()
