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
import tempfile
import time

import pytest
from _waiting import wait_for

import _board_children as children
import _introspect as peek
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.errors import LockTimeout
from shmpool.jobs.jobs_layout import JW, SC, SlotState

SLOTS = 8


pytestmark = pytest.mark.usefixtures("user_jobs_importable")


def _coordinator(name, sample_dir, workers=2):
    return Coordinator(name, data_dir=sample_dir, workers=workers, job_slots=SLOTS, max_clients=16,
                       job_modules=["_jobs"])


def _spawn(target, *args):
    proc = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _assert_whole(coord) -> None:
    """Quiescent board: every slot free and on the free stack, counters balanced."""
    board = peek.job_board(coord)
    wait_for(lambda: board.counts()["free"] == SLOTS and board.counts()["queued"] == 0, 30,
              "every slot free again")
    v = board.v
    assert (v.slots[:, SC.STATE] == SlotState.FREE).all()
    assert sorted(v.free[:SLOTS].tolist()) == list(range(SLOTS))
    c = board.counts()
    assert c["submitted"] == c["completed"] + c["failed"] + c["cancelled"], c
    assert int(v.words[JW.FREE_WAITERS]) == 0


def _all_slots_at_once(name: str) -> None:
    """A fresh client holds all 8 slots at once, and every job completes.

    No job ends before all 8 are submitted (each waits for ``release``), so a slot lost to the
    crash makes the 8th submit time out, however slow the machine: the timeout only bounds the
    failure, it measures nothing.
    """
    with shmpool.connect(name) as client, tempfile.TemporaryDirectory() as folder:
        release = os.path.join(folder, "release")
        try:
            futures = [client.submit("_jobs:wait_for_path", release, i, timeout=10) for i in range(SLOTS)]
        finally:
            open(release, "wb").close()
        assert [f.result(60) for f in futures] == list(range(SLOTS))


def _dies_at_then_whole(coord, name: str, child, fault: str, *args, join: float = 30) -> None:
    """A spawned ``child(name, fault, *args)`` SIGKILLs itself at ``fault``; then a fresh client
    holds every slot at once and the board is whole (the join's timeout only catches a hang)."""
    victim = _spawn(child, name, fault, *args)
    victim.join(join)
    assert victim.exitcode == -signal.SIGKILL, f"the point {fault} was never reached"
    _all_slots_at_once(name)
    _assert_whole(coord)


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
