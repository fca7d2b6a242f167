"""A worker outlives its coordinator only briefly: busy in a long job, it notices the coordinator
is gone, says so on stderr and exits with its own status (shmpool.workers.watchdog)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys

import pytest

import _client_children
import shmpool
from _waiting import wait_for
from shmpool.substrate._proc import is_alive
from shmpool.substrate.names import cleanup, list_objects

pytestmark = pytest.mark.usefixtures("user_jobs_importable")


def test_a_worker_busy_in_a_long_job_exits_soon_after_its_coordinator_is_killed(instance_name, sample_dir,
                                                                                 tmp_path):
    from shmpool.workers.jobs import POLICY_ENV, JobPolicy
    from shmpool.workers.watchdog import EXIT_COORDINATOR_GONE

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
        policy = JobPolicy.build(None, ["_jobs"]).to_json()  # as its coordinator's own workers get it
        extra = subprocess.Popen([sys.executable, "-m", "shmpool.workers.worker", instance_name, "1"],
                                 stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, POLICY_ENV: policy})
        client = shmpool.connect(instance_name)
        pid_files = [tmp_path / f"worker-{i}.pid" for i in range(2)]
        for p in pid_files:
            client.submit("_jobs:report_pid_then_sleep", str(p), 60)
        wait_for(lambda: all(p.exists() for p in pid_files), 30, "both workers busy")
        busy = sorted(int(p.read_text()) for p in pid_files)
        assert extra.pid in busy and len(set(busy)) == 2
        os.kill(coord.pid, signal.SIGKILL)
        coord.join(10)
        # Their jobs sleep 60 s: gone well before that is the watchdog's doing (a hang-catching bound).
        wait_for(lambda: not any(is_alive(pid) for pid in busy), 30, "busy workers gone")
        assert extra.wait(30) == EXIT_COORDINATOR_GONE
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
