"""A ``call()`` with a spilled array, when the memory limit is full of what is not ours to wait for,
raises ArgumentTooLarge instead of waiting for its own thread's earlier calls for ever.

Found by reading Link._place against call(): while the table refuses a request's spilled arrays,
the post waits if jobs of this process still hold spilled arguments (their end frees room). A
call() channel keeps its last answer's slot DELIVERED (released in its next post's lock round),
and the late answer of a call that timed out DONE (dropped by its next collect), both naming
their arguments; only the calling thread frees either, and it was waiting in _place. So once a
thread had made one call with a spilled array, its next one hung (no timeout) or raised
TimeoutError (with one) whenever the limit was full of others' memory, where docs/usage.md says
ArgumentTooLarge ("nothing of ours to wait for"). Now the calling channel's own slots do not
count as room to wait for.

Real coordinator, worker and table; the limit is filled by an allocation of the test's own (not
a job's). Deadlines only catch the hang.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

import numpy as np
import pytest

import _array_jobs as jobs
from _waiting import wait_for
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.errors import ArgumentTooLarge

pytestmark = pytest.mark.usefixtures("user_jobs_importable")

MB = 2 ** 20
SMALL = np.ones(MB // 8)          # 1 MiB: spills
LARGE = np.ones(2 * MB)           # 16 MiB: no room while the filler holds 50 MiB of 64


@pytest.fixture
def limited(instance_name) -> Iterator[Coordinator]:
    with Coordinator(instance_name, workers=1, memory_limit=64 * MB, job_modules=["_array_jobs"]) as coord:
        yield coord


def _call_in_thread(client: shmpool.Client, *args: Any, **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    ended: list[Any] = []

    def run() -> None:
        try:
            ended.append(client.call(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001  # what ended it is the point
            ended.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, ended


@pytest.mark.parametrize("earlier", ["answered", "timed out"])
def test_a_call_refused_room_does_not_wait_for_its_own_channel(limited, earlier):
    """The earlier calls and the refused one use the client's one call() channel (the pool lends
    its idle channel to the next caller, whichever thread). The "answered" case relies on the
    refused call coming within SPENT_IDLE (50 ms) of the earlier answer, before the idle tidy
    frees its slot: it can pass on old code on a very slow machine, never fail on new code."""
    coord = limited
    baseline = int(coord.stats()["live_allocations"])
    with shmpool.connect(coord.name) as client:
        table = client.reader.instance.table
        filler = table.allocate(50 * MB)  # not a job's: nothing of ours frees it
        try:
            if earlier == "timed out":  # its answer lands DONE in the channel's ring, unread
                with pytest.raises(TimeoutError):
                    client.call(jobs.sleep_then_total, 0.3, SMALL, timeout=0.05)
                wait_for(lambda: coord._board.counts()["running"] == 0, 30, "the timed-out job to end")
            else:  # its slot stays DELIVERED, naming its (freed) arguments, until the next post
                assert client.call(jobs.total, SMALL, timeout=30) == float(SMALL.sum())
            thread, ended = _call_in_thread(client, jobs.total, LARGE)
            thread.join(10)  # a hang bound: the refusal takes milliseconds
            assert not thread.is_alive(), "call() waits for room its own channel holds"
            assert len(ended) == 1 and isinstance(ended[0], ArgumentTooLarge), ended
        finally:
            table.free(filler)
        assert client.call(jobs.total, LARGE, timeout=30) == float(LARGE.sum())  # room again
    wait_for(lambda: int(coord.stats()["live_allocations"]) == baseline, 30, "nothing left allocated")
