"""A cancel whose withdrawn slot is reused before it tidies its table neither loses its future
nor hands the slot's next answer to it.

Found by reading CompletionOwner.withdraw: it withdrew the request on the board first, then
removed the future from the slot -> future table. In between, a worker may pop the withdrawn
(CANCELLED) slot and free it, and another submit of the same client take it: that submit's
registration overwrote the cancelled future's entry, so the cancel found "not my future", returned
False and left the future pending for ever (lost: result() hangs). Had the new job's answer come
before its submit registered, the stale entry would have been popped for it instead: the
cancelled future settled with "slot reused" and the new job's answer lost with its slot.

Now the future leaves the table before the withdraw (the owner, meanwhile, parks an answer for
that slot, and a failed withdraw puts the future back, settling a parked answer): the slot is
never reusable while a stale entry is under it.

The window is a few instructions wide; the test holds the cancelling thread in it (a wrapper
around the real Link.withdraw that waits after it) while the main thread gets the slot reused.
Real coordinator, worker and board; the deadlines only catch hangs.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import _array_jobs as jobs
from _introspect import job_board
from _waiting import wait_for
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.jobs.jobs_layout import SlotState

pytestmark = pytest.mark.usefixtures("user_jobs_importable")


def test_a_cancelled_future_whose_slot_is_reused_meanwhile_ends_cancelled(instance_name, tmp_path):
    gate = tmp_path / "gate"
    with Coordinator(instance_name, workers=1, job_slots=2, job_modules=["_array_jobs"]) as coord:
        board = job_board(coord)
        with shmpool.connect(coord.name) as client:
            running = client.submit(jobs.wait_for_path, str(gate), limit=30.0)
            wait_for(lambda: Path(f"{gate}.pid").exists(), 30, "the gated job to start")
            queued = client.submit(pow, 2, 5)  # the second slot; the one worker is busy
            withdrawn, reused = threading.Event(), threading.Event()
            real = client._link.withdraw

            def held_after_withdraw(slot: int, seq: int, **kwargs: Any) -> bool:
                done = real(slot, seq, **kwargs)
                if done and threading.current_thread().name == "canceller":
                    withdrawn.set()
                    reused.wait(30)  # the window between the board's withdraw and the table's
                return done

            client._link.withdraw = held_after_withdraw  # type: ignore[method-assign]
            cancelled: list[bool] = []
            canceller = threading.Thread(target=lambda: cancelled.append(queued.cancel()), name="canceller")
            canceller.start()
            try:
                assert withdrawn.wait(30)
                gate.touch()  # the worker answers, pops the withdrawn slot and frees it
                assert running.result(30) == 0.0
                wait_for(lambda: board.slot_row(queued._slot).state == SlotState.FREE, 30, "the withdrawn slot freed")
                later = [client.submit(pow, 3, k, timeout=30) for k in (2, 3)]  # both slots: one is the withdrawn one
                assert queued._slot in {f._slot for f in later}
                assert [f.result(30) for f in later] == [9, 27]
            finally:
                reused.set()
                canceller.join(30)
            assert cancelled == [True]
            assert queued.cancelled() and queued.done()
            assert client.submit(pow, 2, 10).result(30) == 1024  # the client works on
            assert not client._futures  # nothing stale left in its table
