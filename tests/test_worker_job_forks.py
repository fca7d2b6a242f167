"""A job that calls fork() and returns in both processes.

The child is a copy of the worker mid-job: returning from the job it would finish the parent's
slot under the parent's identity and go on taking jobs as that worker (its reader has no row of
its own, so every lookup there fails; a job it took and then died with stays RUNNING under the
living parent's name). The worker answers the job from the parent alone, and a child that
returns from a job leaves at once, touching nothing shared.

Real coordinator and workers. Deadlines in wait_for only catch hangs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

import _forking_jobs as jobs
from _waiting import wait_for
import shmpool
from shmpool.coordinator import Coordinator


@pytest.fixture
def one_worker(instance_name, user_jobs_importable) -> Iterator[Coordinator]:
    with Coordinator(instance_name, workers=1, job_slots=8, job_modules=["_forking_jobs"]) as coord:
        yield coord


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}/status").exists() else ""
    return "State:\tZ" in status  # exited, not yet reaped by the worker


@pytest.mark.parametrize("child_lingers", [0.0, 0.3])
def test_a_job_that_forks_is_answered_by_the_worker_and_its_child_serves_nothing(one_worker, tmp_path,
                                                                                   child_lingers):
    coord = one_worker
    marker = str(tmp_path / "child.pid")
    with shmpool.connect(coord.name) as client:
        (worker,) = {client.call(jobs.worker_pid) for _ in range(3)}
        assert client.call(jobs.fork_and_return, marker, child_lingers, timeout=30) == "parent"
        wait_for(lambda: Path(marker).exists(), what="the child's pid")
        child = int(Path(marker).read_text())
        assert child != worker
        # The child must not take jobs: every answer from here on is the worker's own.
        answers = [client.submit(jobs.worker_pid) for _ in range(40)]
        assert {f.result(timeout=30) for f in answers} == {worker}
        wait_for(lambda: _gone(child), what=f"the forked child {child} gone")
        wait_for(lambda: coord.stats()["jobs"]["free"] == 8, what="every slot free")


@pytest.mark.parametrize("how, status", [("return", 0), ("exit 7", 7), ("raise", 1)])
def test_a_forked_child_leaving_a_job_exits_with_the_status_it_asked_for(one_worker, how, status):
    with shmpool.connect(one_worker.name) as client:
        assert client.call(jobs.fork_and_report, how, timeout=30) == status
        assert client.call(jobs.worker_pid, timeout=30) > 0  # the worker serves on


def test_a_child_forked_by_one_item_of_a_map_chunk_runs_no_later_item(one_worker, tmp_path):
    """The child returns from item 0 of a 4-item chunk: it leaves there, so items 1-3 run once
    each (in the worker), not a second time in the child."""
    with shmpool.connect(one_worker.name) as client:
        assert list(client.map(jobs.note_and_fork_first, range(4), [str(tmp_path)] * 4, chunksize=4,
                               timeout=30)) == [0, 1, 2, 3]
        (worker,) = {client.call(jobs.worker_pid) for _ in range(3)}
    ran = sorted(p.name for p in tmp_path.iterdir())
    assert ran == sorted(f"{x}.{worker}" for x in range(4)), ran
