"""A thread that drains answers while it waits in result() is not raced by close()'s detach.

Found by reading CompletionOwner: a thread waiting in ``result()`` with other futures pending
pops the channel's ring itself (help) and decodes the answers after releasing the drain lock;
the owner's detach, taking that lock, then released the channel (freeing the popped slots and
their spilled results) and unmapped the board under the decoding thread, which does not hold the
Link. The helper's result() raised an internal error (the board gone under it) and its future,
already out of the table, stayed pending for ever; a spill freed mid-read could be reallocated
and read torn. The reading of popped answers now holds the drain lock (the detach waits for it),
and answers read after a detach fail with ClientClosed.

The window is held open: the owner's thread is kept out of the ring (its wait is held, as a
descheduled thread would be), so the waiting thread helps, and it is paused inside the decoding
while close() runs. Real coordinator, workers and board; waits are hang bounds, and one (2 s)
only gives the owner time to detach where the race exists.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import _array_jobs as jobs
from _waiting import wait_for
import shmpool
from shmpool.coordinator import Coordinator

pytestmark = pytest.mark.usefixtures("user_jobs_importable")

LARGE = np.arange(2 ** 15, dtype=np.float64)  # its double is a 256 KiB result: spilled


def test_close_does_not_release_answers_a_waiting_thread_is_reading(instance_name, tmp_path):
    gate = tmp_path / "gate"
    with Coordinator(instance_name, workers=2, job_modules=["_array_jobs"]) as coord:
        client = shmpool.connect(coord.name)
        link, owner = client._link, client._owner
        owner_go, reading, read_go, released = (threading.Event() for _ in range(4))
        real_wait, real_outcome, real_release = link.board.wait_completions, link.outcome, link.release_channel

        def owner_wait(channel: int, timeout: float | None) -> bool:  # the owner, descheduled
            owner_go.wait(60)
            return bool(real_wait(channel, timeout))

        def outcome(slot: int, seq: int, job: str) -> Any:
            if threading.current_thread().name == "waiter":
                reading.set()
                read_go.wait(60)
            return real_outcome(slot, seq, job)

        def release_channel(channel: int) -> None:
            released.set()
            real_release(channel)

        link.board.wait_completions = owner_wait  # type: ignore[method-assign]
        link.outcome = outcome  # type: ignore[method-assign]
        link.release_channel = release_channel  # type: ignore[method-assign]

        blocked = client.submit(jobs.wait_for_path, str(gate), limit=30.0)  # keeps a second future pending
        wait_for(lambda: Path(f"{gate}.pid").exists(), 30, "the gated job to start")
        answered = client.submit(jobs.scaled, LARGE, 2.0)
        got: list[Any] = []

        def waiter() -> None:
            try:
                got.append(answered.result(60))
            except BaseException as exc:  # noqa: BLE001  # what it raised is the finding
                got.append(exc)

        thread = threading.Thread(target=waiter, name="waiter")
        thread.start()
        closer = threading.Thread(target=client.close, name="closer")
        try:
            assert reading.wait(30), "the waiting thread did not read the answer itself"
            closer.start()
            owner_go.set()  # the owner wakes to a close: it detaches now, if nothing stops it
            released.wait(2.0)  # where the race exists, the owner has released the channel by now
            if released.is_set():
                owner.join(30)
        finally:
            read_go.set()
            owner_go.set()
            gate.touch()
            thread.join(60)
            closer.join(60)
        assert len(got) == 1
        assert isinstance(got[0], np.ndarray) and np.array_equal(got[0], LARGE * 2.0), repr(got[0])[:300]
        assert owner.join(30)  # detached once the reading ended
        assert answered.done() and blocked.done()

