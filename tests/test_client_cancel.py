"""A cancelled JobFuture is seen as done by concurrent.futures.wait and as_completed at once.

CPython's executors move a cancelled future to CANCELLED_AND_NOTIFIED when they reach it; a
JobFuture withdrawn from the board is reached by nobody, so ``cancel()`` notifies it itself.
Before, ``wait([cancelled], timeout=5)`` waited the whole 5 s and called it not done, and
``as_completed`` raised TimeoutError for it.
"""

from __future__ import annotations

import concurrent.futures as cf
import time

import shmpool
from shmpool.coordinator import Coordinator

SLOTS = 8


def test_wait_and_as_completed_see_a_cancelled_future_at_once(instance_name):
    with Coordinator(instance_name, workers=1, job_slots=SLOTS) as coord:
        with shmpool.connect(instance_name) as client:
            busy = client.submit(time.sleep, 1.0)  # the one worker is busy: the next job stays queued
            queued = client.submit(pow, 3, 2)
            assert queued.cancel() and queued.cancelled()
            t0 = time.monotonic()
            done, not_done = cf.wait([queued], timeout=5)
            assert done == {queued} and not not_done
            assert list(cf.as_completed([queued], timeout=5)) == [queued]
            assert time.monotonic() - t0 < 4  # a generous bound: before, it took the full timeout
            assert queued.cancel()  # idempotent
            assert busy.result(10) is None
            assert coord._board.counts()["cancelled"] >= 1
