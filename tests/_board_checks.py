"""The job board's crash-test helpers, shared by the board fault tests (test_board_heal,
test_board_core_faults, test_board_submit_many_faults, test_board_wake_pending): a coordinator
of SLOTS slots, a spawned victim that SIGKILLs itself at a fault point, and the checks that the
board is whole again after it."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import tempfile

from _waiting import wait_for

import _introspect as peek
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.jobs.jobs_layout import JW, SC, SlotState

SLOTS = 8



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
