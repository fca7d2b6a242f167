"""Defects found in the reliability review (section 5), each pinned by a test with real processes:
orphaned busy workers, cleanup of another user's objects, ids that are not ints, a keywords str,
and spill files left by a crashed run."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import posix_ipc
import pytest

import _client_children
import shmpool
from coordinator import Coordinator
from coordinator.capacity import CapacityPolicy
from shmpool import InvalidLayer
from shmpool._proc import is_alive
from shmpool.context import NavigationPath
from shmpool.names import SHM_DIR, cleanup, list_objects, runtime_dir, segment_name, semaphore_name
from shmpool.sample import build_sample

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample")
    build_sample(path)
    return path


@pytest.fixture(autouse=True)
def _user_jobs_importable(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))


def _wait_for(predicate, seconds=10.0, what="condition"):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {seconds} s"
        time.sleep(0.01)


# ----------------------------------------------------------------------------- worker watchdog

def test_a_worker_busy_in_a_long_job_exits_soon_after_its_coordinator_is_killed(instance_name, sample_dir,
                                                                                 tmp_path):
    from workers.watchdog import EXIT_COORDINATOR_GONE

    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    coord = ctx.Process(target=_client_children.coordinator_process, args=(instance_name, str(sample_dir), ready, stop))
    coord.start()
    # A second worker started by the test, so that its exit status can be read (the pool's own
    # worker is the dead coordinator's child, and init reaps it).
    extra = None
    client = None
    try:
        assert ready.wait(60)
        extra = subprocess.Popen([sys.executable, "-m", "workers.worker", instance_name, "1"],
                                 stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        client = shmpool.connect(instance_name)
        pid_files = [tmp_path / f"worker-{i}.pid" for i in range(2)]
        for p in pid_files:
            client.submit("_jobs:report_pid_then_sleep", str(p), 60)
        _wait_for(lambda: all(p.exists() for p in pid_files), 30, "both workers busy")
        busy = sorted(int(p.read_text()) for p in pid_files)
        assert extra.pid in busy and len(set(busy)) == 2
        os.kill(coord.pid, signal.SIGKILL)
        coord.join(10)
        _wait_for(lambda: not any(is_alive(pid) for pid in busy), 1.5, "busy workers gone")
        assert extra.wait(5) == EXIT_COORDINATOR_GONE
        why = extra.stderr.read()
        assert f"coordinator (pid {coord.pid})" in why and "is gone" in why, why
    finally:
        if client is not None:
            client.close()
        if coord.is_alive():
            coord.kill()
            coord.join(10)
        if extra is not None and extra.poll() is None:
            extra.kill()
            extra.wait(10)
        cleanup(instance_name)  # the coordinator died: nobody else removes its names
    assert list_objects(instance_name) == ([], [])
