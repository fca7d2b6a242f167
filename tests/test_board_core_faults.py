"""Deaths at the compiled core's own steps heal like the rest of the board's: the lock won but no
pid recorded yet (lock.won), the lock held (lock.held, killed rather than stopped), and a
submitter killed asleep in a futex wait for a free slot (its sleeper counts).

The windows between the slot transitions' stores (submit.popped, take.popped, deliver.marked,
...) are the same names in C and are walked by tests/test_jobboard_heal.py.
"""

from __future__ import annotations

import pytest
from _waiting import wait_for

import _board_children as children
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.jobs.jobs_layout import CC, JW
from _board_checks import SLOTS, _all_slots_at_once, _assert_whole, _coordinator, _dies_at_then_whole, _spawn

pytestmark = pytest.mark.usefixtures("user_jobs_importable")


@pytest.mark.parametrize("fault", ["lock.won.jobs", "lock.held.jobs"])
def test_client_killed_holding_the_board_lock_is_repaired_by_the_next_locker(instance_name, sample_dir, fault):
    with _coordinator(instance_name, sample_dir) as coord:
        _dies_at_then_whole(coord, instance_name, children.client_dies_at, fault, 3)
        assert coord._board.counts()["lock_recoveries"] >= 1


@pytest.mark.parametrize("fault", ["lock.won.jobs", "lock.held.jobs"])
def test_worker_killed_holding_the_board_lock_strands_no_future(instance_name, sample_dir, tmp_path, fault):
    token = tmp_path / "fire-once"
    token.write_text("")
    # Armed by a job, so the worker dies serving (in finish's lock round), not while starting.
    with Coordinator(instance_name, data_dir=sample_dir, workers=2, job_slots=SLOTS, max_clients=16,
                     job_modules=["_jobs", "_core_jobs"]) as coord:
        with shmpool.connect(instance_name) as client:
            assert client.call("_core_jobs:arm_fault", f"{fault}@{token}", timeout=30) == "armed"
            assert not token.exists(), f"no worker reached {fault}"
            wait_for(lambda: coord._pool.deaths, 10, "the worker death noticed")
            futures = [client.submit("_jobs:slow", 0, i) for i in range(4)]
            assert [f.result(10) for f in futures] == list(range(4))
        _all_slots_at_once(instance_name)
        _assert_whole(coord)
        assert coord._board.counts()["lock_recoveries"] >= 1


def test_a_submitter_killed_asleep_waiting_for_a_slot_leaves_no_waiter_counted(instance_name, sample_dir):
    with _coordinator(instance_name, sample_dir) as coord:
        board = coord._board
        victim = _spawn(children.client_sleeps_for_a_slot, instance_name, SLOTS)
        wait_for(lambda: board.v.words_mv[JW.FREE_WAITERS] == 1, 30, "the victim asleep for a slot")
        victim.kill()
        victim.join(10)
        # Its channel is swept with it: the count it left goes with the channel's WAITING.
        wait_for(lambda: board.v.words_mv[JW.FREE_WAITERS] == 0 and not board.v.channels[:, CC.PID].any(),
                 30, "the dead client swept")
        wait_for(lambda: board.counts()["free"] == SLOTS, 30, "its cancelled and orphaned jobs ended")
        _all_slots_at_once(instance_name)
        _assert_whole(coord)
