"""The job board heals from a death at any instruction: capacity, queue, rings and wake-ups.

Each crash window is a few instructions wide, so the victim arms a named fault point
(shmpool.substrate._faults) and SIGKILLs itself exactly there. Afterwards the board must be whole again
within one supervision round: every slot usable at once by a fresh client, every future of a
live client completed, and submitted == completed + failed + cancelled.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest
from _waiting import wait_for

import _board_children as children
from _board_checks import SLOTS, _all_slots_at_once, _assert_whole, _coordinator, _dies_at_then_whole, _spawn
import _introspect as peek
import shmpool
from shmpool.errors import LockTimeout

pytestmark = pytest.mark.usefixtures("user_jobs_importable")


@pytest.mark.parametrize("fault", ["submit.popped", "submit.filled", "submit.queued", "release.pushed"])
def test_client_killed_at_each_window_loses_no_capacity(instance_name, sample_dir, fault):
    with _coordinator(instance_name, sample_dir) as coord:
        _dies_at_then_whole(coord, instance_name, children.client_dies_at, fault, 3)


def test_clients_killed_with_jobs_in_flight_lose_no_capacity(instance_name, sample_dir):
    with _coordinator(instance_name, sample_dir) as coord:
        for _ in range(3):
            ready = mp.get_context("spawn").Event()
            victim = _spawn(children.client_with_jobs_in_flight, instance_name, SLOTS, ready)
            assert ready.wait(30)
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(10)
        _all_slots_at_once(instance_name)
        _assert_whole(coord)
        assert peek.job_counts(coord)["cancelled"] > 0  # the sweep counts what it withdrew


@pytest.mark.parametrize("fault", ["deliver.marked", "take.popped", "finish.delivered", "worker.woken"])
def test_worker_killed_at_each_window_strands_no_future(instance_name, sample_dir, tmp_path,
                                                        monkeypatch, fault):
    token = tmp_path / "fire-once"
    token.write_text("")
    monkeypatch.setenv("SHMPOOL_FAULT", f"{fault}@{token}")  # one worker, once, dies there
    with _coordinator(instance_name, sample_dir) as coord:
        with shmpool.connect(instance_name) as client:
            futures = [client.submit("_jobs:slow", 0, i) for i in range(4)]
            assert [f.result(10) for f in futures] == list(range(4))
            assert not token.exists(), f"no worker reached {fault}"
            wait_for(lambda: peek.worker_deaths(coord), 30, "the worker death noticed")
            assert [client.call("_jobs:slow", 0, i, timeout=30) for i in range(3)] == [0, 1, 2]
        _all_slots_at_once(instance_name)
        _assert_whole(coord)


def test_a_stopped_lock_holder_makes_calls_fail_on_time_naming_it(instance_name, sample_dir):
    with _coordinator(instance_name, sample_dir) as coord:
        client = shmpool.connect(instance_name)
        victim = _spawn(children.client_stops_holding_the_board_lock, instance_name)
        try:
            wait_for(lambda: peek.board_lock_holder(coord) == victim.pid, 30, "the victim holding the lock")
            for attempt in (lambda: client.call("_jobs:slow", 0, 1, timeout=0.5),
                            lambda: client.submit("_jobs:slow", 0, 1, timeout=0.5),
                            lambda: shmpool.connect(instance_name, timeout=0.5)):
                t0 = time.monotonic()
                with pytest.raises(LockTimeout) as caught:
                    attempt()
                # It waited about its timeout, then gave up (the upper bound only catches a hang).
                assert 0.4 <= time.monotonic() - t0 < 30
                assert caught.value.owner_pid == victim.pid and str(victim.pid) in str(caught.value)
        finally:
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(10)
        # The kernel released the dead holder's lock; the next holder repaired what it left.
        assert client.call("_jobs:slow", 0, "after", timeout=30) == "after"
        client.close()
        _all_slots_at_once(instance_name)
        _assert_whole(coord)
        assert peek.job_counts(coord)["lock_recoveries"] >= 1
