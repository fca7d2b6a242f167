"""What crosses the job board has a name, and the board's owner keeps its words.

The board alone (no workers, no completion thread) lets this process play client and worker, so
every step happens exactly when the test says; the last test runs real workers.
"""

from __future__ import annotations

import threading

import pytest

import shmpool
from _waiting import wait_for
from shmpool.coordinator import Coordinator
from shmpool.jobs import jobboard
from shmpool.substrate._proc import my_identity
from shmpool.errors import NotInWorker, UnknownJob
from shmpool.jobs.jobboard import JobBoard
from shmpool.jobs.jobs_layout import JobWord, SlotState, Status
from shmpool.jobs.spill import Response, SpillRef

SLOTS = 4


@pytest.fixture
def board(instance_name):
    board = JobBoard.create(instance_name, slots=SLOTS, channels=4, payload=1024)
    try:
        yield board
    finally:
        board.unlink()
        board.close()


def _state(board, slot) -> SlotState:
    return board.slot_row(slot).state


def test_a_finished_slot_answers_with_a_named_response(board):
    channel = board.claim_channel()
    slot, seq = board.submit(channel, b"request", timeout=1)
    assert board.take() == (slot, seq)
    assert board.is_running(slot, seq) and not board.is_running(slot, seq + 1)
    assert board.client_of(slot) == my_identity()
    board.finish(slot, seq, Status.OK, b"answer")
    response = board.response(slot)
    assert isinstance(response, Response) and response.spill is None
    assert (response.seq, response.status, bytes(response.data)) == (seq, Status.OK, b"answer")
    response.data.release()
    assert not board.is_running(slot, seq)


def test_a_spilled_response_names_where_it_lies_and_a_dead_worker_strands_it(board):
    channel = board.claim_channel()
    slot, seq = board.submit(channel, b"big", timeout=1)
    board.take()
    spill = SpillRef(pool=2, first_block=17, nbytes=300_000, record=5, serial=99)
    assert board.stage_spill(slot, seq, spill)
    # This process is the worker; a start token that is not ours is another process of our pid.
    pid, start = my_identity()
    assert board.requeue_worker(pid, lambda *_: b"crashed", start=start + 1) == (0, 0)
    assert _state(board, slot) is SlotState.RUNNING and board.stranded_spills == []
    row = board.slot_row(slot)
    assert (row.worker_pid, row.worker_start, row.spill_pool, row.spill_serial) == (pid, start, 2, 99)
    assert board.requeue_worker(pid, lambda *_: b"crashed", start=start) == (1, 0)
    assert board.slot_row(slot).attempts == 1 and board.slot_row(slot).worker_pid == 0
    assert board.stranded_spills == [spill]  # the coordinator frees what the dead worker staged
    assert _state(board, slot) is SlotState.SUBMITTED
    assert board.take() == (slot, seq)  # queued again: the next worker runs it
    assert board.stage_spill(slot, seq, spill)
    board.finish(slot, seq, Status.OK, None)
    assert board.response(slot) == Response(seq, Status.OK, None, spill)


def test_stopping_frees_withdrawn_slots_and_wakes_the_submitter_waiting_for_one(board, monkeypatch):
    # A waiter that only a post can wake: without it the test would wait 60 s, not pass.
    monkeypatch.setattr(jobboard, "WAIT_SLICE", 60.0)
    channel = board.claim_channel()
    taken = [board.submit(channel, b"fill", timeout=1) for _ in range(SLOTS)]
    assert board.cancel(*taken[0])  # withdrawn, still in the queue
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(board.submit(channel, b"late", timeout=60)), daemon=True)
    waiter.start()
    wait_for(lambda: board.v.words_mv[JobWord.FREE_WAITERS] == 1, what="the submitter registered as a waiter")
    answered = board.fail_outstanding(lambda _slot: b"stopped")
    assert answered == SLOTS - 1
    waiter.join(20)
    assert not waiter.is_alive(), "the waiter was not woken for the slot fail_outstanding freed"
    assert got and got[0][0] == taken[0][0]


def _free_stack_is_a_set(board) -> None:
    top = board.counts()["free"]
    stack = board.v.free[:top].tolist()
    assert len(stack) == len(set(stack)), f"a slot is on the free stack twice: {stack}"


def test_releasing_the_same_answer_twice_frees_it_once(board):
    # The board alone, no workers and no completion thread: this process plays client and
    # worker, so every step happens exactly when the test says.
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
    assert _state(board, again) == SlotState.SUBMITTED and board.counts()["free"] == SLOTS - 1


def test_the_board_counts_its_workers_itself(board):
    before = board.workers_started()
    board.note_worker_started()
    assert board.workers_started() == before + 1
    assert board.accepting()
    board.stop_accepting()
    assert not board.accepting()
    with pytest.raises(shmpool.AttachError, match="stopping"):
        board.submit(board.claim_channel(), b"x", timeout=1)


def test_worker_reader_outside_a_worker_is_a_typed_error():
    with pytest.raises(NotInWorker) as err:
        shmpool.worker_reader()
    assert isinstance(err.value, shmpool.ShmPoolError) and err.value.call == "shmpool.worker_reader()"


def test_an_unknown_job_reaches_the_client_as_unknown_job_itself(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=1, job_slots=8) as coord:
        assert coord.running
        with shmpool.connect(instance_name) as client:
            for run in (lambda: client.submit("no_such_module:job").result(10),
                        lambda: client.call("no_such_module:job", timeout=10)):
                with pytest.raises(UnknownJob) as err:
                    run()
                assert type(err.value) is UnknownJob  # not a JobError wrapping its name
                assert err.value.job == "no_such_module:job" and err.value.reason


def test_a_worker_dying_at_start_up_is_a_typed_error_naming_it(board):
    from shmpool.errors import WorkerStartFailed
    from shmpool.coordinator.pool import WorkerPool

    # A log level loguru refuses: the worker dies in main(), before it attaches.
    pool = WorkerPool(board.name, board, 1, env={"SHMPOOL_LOG_LEVEL": "no-such-level"})
    try:
        with pytest.raises(WorkerStartFailed) as err:
            pool.start(timeout=30)
        assert err.value.index == 0 and err.value.pid == pool.workers[0].proc.pid
        assert "status 1" in err.value.reason and "failed to start" in str(err.value)
        assert board.workers_started() == 0
    finally:
        pool.stop()


def test_workers_not_serving_in_time_are_a_timeout_naming_the_count(board):
    from shmpool.errors import WorkersNotReady
    from shmpool.coordinator.pool import WorkerPool

    pool = WorkerPool(board.name, board, 2)
    try:
        with pytest.raises(WorkersNotReady) as err:
            pool.start(timeout=0.0)  # no Python process starts in no time
        assert isinstance(err.value, TimeoutError)
        assert (err.value.ready, err.value.count, err.value.name) == (0, 2, board.name)
    finally:
        pool.stop()
