"""WAKE_PENDING: a submit wakes no worker while one woken for the queue has not left its wait
(that worker drains the queue, and wakes the next sleeper itself when it takes a job with more
queued). What a death or a stale flag can cost is a delay of one worker slice, never a job:

- the flag left set while every worker sleeps (a waker killed between setting it and its
  FUTEX_WAKE, written here by hand): a call still completes, and the flag is cleared;
- a client killed at exactly that instruction (the ``wake.pending`` kill point): the board is
  whole afterwards and every slot can be used at once;
- several clients and workers at once: every job of every client is answered, and the flag ends
  clear with the workers asleep.
"""

from __future__ import annotations

import signal
import threading

import pytest
from _waiting import wait_for

import _board_children as children
import _introspect as peek
import shmpool
from shmpool.jobs.jobs_layout import JW
from _board_checks import _all_slots_at_once, _assert_whole, _coordinator, _spawn

pytestmark = pytest.mark.usefixtures("user_jobs_importable")


def _asleep(board, workers: int) -> bool:
    return int(board.v.words_mv[JW.QUEUE_SLEEPERS]) == workers


def test_a_pending_flag_left_set_delays_a_job_by_a_slice_at_most(instance_name, sample_dir):
    with _coordinator(instance_name, sample_dir) as coord, shmpool.connect(instance_name) as client:
        board = peek.job_board(coord)
        wait_for(lambda: _asleep(board, 2), 30, "both workers asleep")
        board.v.words_mv[JW.WAKE_PENDING] = 1  # as a waker killed before its FUTEX_WAKE leaves it
        # No submit wakes anyone now; a worker's own slice (0.2 s) ends its sleep and it looks.
        assert client.call("_jobs:double", 21, timeout=10) == 42
        wait_for(lambda: board.v.words_mv[JW.WAKE_PENDING] == 0, 10, "the flag cleared by a worker")
        assert [f.result(10) for f in [client.submit("_jobs:double", i) for i in range(20)]] == [
            2 * i for i in range(20)]


def test_a_client_killed_between_the_flag_and_its_wake_up_leaves_the_board_whole(instance_name, sample_dir):
    with _coordinator(instance_name, sample_dir) as coord:
        board = peek.job_board(coord)
        wait_for(lambda: _asleep(board, 2), 30, "both workers asleep")
        victim = _spawn(children.client_dies_at, instance_name, "wake.pending", 3)
        victim.join(30)
        assert victim.exitcode == -signal.SIGKILL, "the point wake.pending was never reached"
        _all_slots_at_once(instance_name)
        _assert_whole(coord)


def test_many_clients_pipelining_get_every_answer_and_leave_the_flag_clear(instance_name, sample_dir):
    with _coordinator(instance_name, sample_dir) as coord:
        board = peek.job_board(coord)
        answers: dict[int, list[int]] = {}

        def pipeline(k: int) -> None:
            with shmpool.connect(instance_name) as client:
                futures = [client.submit("_jobs:double", 1000 * k + i) for i in range(300)]
                answers[k] = [f.result(30) for f in futures]

        threads = [threading.Thread(target=pipeline, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert {k: v for k, v in answers.items()} == {k: [2 * (1000 * k + i) for i in range(300)] for k in range(3)}
        wait_for(lambda: _asleep(board, 2) and board.v.words_mv[JW.WAKE_PENDING] == 0, 30,
                 "the workers asleep again, no wake-up pending")
        _assert_whole(coord)


def test_a_worker_going_to_sleep_clears_a_flag_set_while_it_worked(instance_name, sample_dir):
    # A flag set for a worker that had left its wait already must not outlive the next sleep:
    # every submit after it would wake nobody, and each job would wait out a worker's slice.
    with _coordinator(instance_name, sample_dir) as coord, shmpool.connect(instance_name) as client:
        board = peek.job_board(coord)
        busy = [client.submit("_jobs:slow", 0.5, i) for i in range(2)]
        wait_for(lambda: board.counts()["running"] == 2, 30, "both workers running a job")
        board.v.words_mv[JW.WAKE_PENDING] = 1
        assert [f.result(30) for f in busy] == [0, 1]
        wait_for(lambda: _asleep(board, 2), 30, "both workers asleep again")
        assert board.v.words_mv[JW.WAKE_PENDING] == 0
