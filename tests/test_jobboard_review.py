"""Defects found by a second read of the job path, each reproduced with real processes.

A slot released twice, a withdrawn future swallowing a later answer, call()'s last slot lost
when its next submit fails, a submitter waiting for a slot after its coordinator died, and a
waiter interrupted by a signal left registered for ever.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

import _board_children as children
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.errors import AttachError, RequestTooLarge
from shmpool.jobs.jobboard import JobBoard
from shmpool.jobs.jobs_layout import CC, JW, SC, SlotState
from shmpool.substrate.names import cleanup, list_objects

SLOTS = 8


pytestmark = pytest.mark.usefixtures("user_jobs_importable")


@pytest.fixture
def coord(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=2, job_slots=SLOTS, max_clients=16,
                     job_modules=["_jobs"]) as c:
        yield c


def _free_stack_is_a_set(board) -> None:
    top = board.counts()["free"]
    stack = board.v.free[:top].tolist()
    assert len(stack) == len(set(stack)), f"a slot is on the free stack twice: {stack}"


def test_releasing_the_same_answer_twice_frees_it_once(instance_name):
    # The board alone, no workers and no completion thread: this process plays client and
    # worker, so every step happens exactly when the test says.
    board = JobBoard.create(instance_name, slots=SLOTS, channels=2, payload=1024)
    try:
        channel = board.claim_channel()
        slot, seq = board.submit(channel, b"request", timeout=1)
        assert board.take() == (slot, seq)
        board.finish(slot, seq, 0, b"answer")
        assert board.completed(channel) == [slot]
        board.release_slots([(slot, seq)])
        board.release_slots([(slot, seq)])  # a deferred copy of the same release: a no-op
        _free_stack_is_a_set(board)
        assert board.counts()["free"] == SLOTS
        again, seq2 = board.submit(channel, b"next", timeout=1)  # the slot is reused...
        board.release_slots([(slot, seq)])  # ...and a stale release must not free it
        assert board.v.slots[again, SC.STATE] == SlotState.SUBMITTED and board.counts()["free"] == SLOTS - 1
    finally:
        board.unlink()
        board.close()


def test_a_withdrawn_future_does_not_swallow_the_next_answer_in_its_slot(coord):
    with shmpool.connect(coord.name) as client:
        blockers = [client.submit("_jobs:slow", 0.5, i) for i in range(2)]  # both workers busy
        queued = client.submit("_jobs:slow", 0, "withdrawn")
        assert queued.cancel()
        assert queued._slot not in client._futures  # nothing left under the slot
        later = [client.submit("_jobs:slow", 0, i) for i in range(SLOTS - 2)]
        assert [f.result(10) for f in later] == list(range(SLOTS - 2))
        assert [f.result(10) for f in blockers] == [0, 1]


def test_a_failed_call_does_not_lose_the_previous_calls_slot(coord):
    with shmpool.connect(coord.name) as client:
        huge = b"x" * (70 * 1024)
        for i in range(SLOTS):
            assert client.call("_jobs:echo", i, timeout=5)["args"] == [i]
            with pytest.raises(RequestTooLarge):
                client.call("_jobs:echo", huge, timeout=5)
        deadline = time.monotonic() + 2
        while coord._board.counts()["free"] != SLOTS:
            assert time.monotonic() < deadline, f"slots lost: {coord._board.counts()}"
            time.sleep(0.01)
        with shmpool.connect(coord.name) as other:
            assert other.submit("_jobs:echo", 1, timeout=1).result(5)["args"] == [1]


def test_a_submitter_waiting_for_a_slot_gives_up_once_the_coordinator_dies(make_name, sample_dir):
    name = make_name()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=children.coordinator_with_a_small_board, args=(name, str(sample_dir), ready),
                       daemon=True)
    proc.start()
    try:
        assert ready.wait(60)
        client = shmpool.connect(name)
        busy = [client.submit("_jobs:slow", 30, i) for i in range(SLOTS)]
        out: dict = {}

        def ninth():
            try:
                client.submit("_jobs:echo", 9)  # no timeout: waits for a slot
            except BaseException as exc:
                out["error"] = exc

        waiter = threading.Thread(target=ninth, daemon=True)
        waiter.start()
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        waiter.join(3)
        assert not waiter.is_alive(), "submit() still waits for a slot nobody will ever free"
        assert isinstance(out.get("error"), AttachError), out
        assert all(isinstance(f.exception(5), AttachError) for f in busy)
        client.close()
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        cleanup(name)
    assert list_objects(name) == ([], [])


class _Interrupted(Exception):
    pass


def test_a_waiter_interrupted_by_a_signal_leaves_no_phantom_registration(coord):
    with shmpool.connect(coord.name) as client:
        busy = [client.submit("_jobs:slow", 1.0, i) for i in range(SLOTS)]

        def interrupt(*_):
            raise _Interrupted

        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            # The core's futex wait runs the handler and ends with what it raised (PEP 475).
            with pytest.raises(_Interrupted):
                client.submit("_jobs:echo", 1, timeout=5)  # interrupted while waiting for a slot
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert int(coord._board.v.words[JW.FREE_WAITERS]) == 0
        assert [f.result(10) for f in busy] == list(range(SLOTS))
        assert not coord._board.v.channels[:, CC.WAITING].any()  # nor counted in its channel
