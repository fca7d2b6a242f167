"""A done-callback run while the client ends its jobs may wait for another job of the client.

Found by the second review of the job path's fixes: 6155abb let a done-callback (run in the
completion thread) wait for another future of its client by draining the ring itself, but not
when the callback runs because the owner is ending every pending job: at close() (the detach
withdraws the queued jobs and fails the running ones, one after the other) and when the
coordinator is gone (every pending job fails with that). There the callback of the first job ended
waited for the second, which only the same thread ends, after the callback returns:
``exception(t)`` waited out t and ``result()`` without a timeout hung the completion thread for
ever (close() then warned and the channel was never released). Now the wait ends the future it
waits for itself, as the detach would have a moment later. Real coordinator, worker and board;
the deadlines only catch the hang.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Future
from typing import Any

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.errors import AttachError, ClientClosed


def _queued_behind_a_running_job(client: Any, gate: Any, jobs: Any) -> tuple[Any, Any]:
    """(a job a worker runs until ``gate`` exists, a job queued behind it): one worker."""
    import time

    running = client.submit(jobs.wait_for_path, str(gate), limit=60.0)
    deadline = time.monotonic() + 30
    while not running.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.running(), "the gated job never started"
    return running, client.submit(pow, 2, 10)


def _waiting_callback(other: Any, seen: list[Any], finished: threading.Event) -> Any:
    def waiting(done: Future) -> None:  # type: ignore[type-arg]
        try:
            seen.append(other.exception(20))  # waited out its 20 s (TimeoutError), before
        except BaseException as exc:  # noqa: BLE001  # reported to the test thread
            seen.append(exc)
        finally:
            finished.set()
    return waiting


def test_a_callback_run_by_close_can_wait_for_another_job_of_its_client(instance_name, tmp_path,
                                                                         user_jobs_importable):
    import _array_jobs as jobs

    gate = tmp_path / "gate"
    with Coordinator(instance_name, workers=1, job_modules=["_array_jobs"]) as coord:
        client = shmpool.connect(coord.name)
        seen: list[Any] = []
        finished = threading.Event()
        try:
            running, queued = _queued_behind_a_running_job(client, gate, jobs)
            running.add_done_callback(_waiting_callback(queued, seen, finished))
            client.close()  # fails the running job (its callback runs), withdraws the queued one
            assert finished.wait(10), "the callback's wait for the queued job hung"
            assert len(seen) == 1 and isinstance(seen[0], CancelledError), seen
            assert queued.cancelled()
            assert isinstance(running.exception(0), ClientClosed)
            assert client._owner.join(10), "the client never detached"
        finally:
            gate.touch()


def test_a_callback_run_when_the_coordinator_is_gone_can_wait_for_another_job(instance_name, tmp_path,
                                                                               user_jobs_importable):
    """coordinator_alive is made to say "gone", as a SIGKILLed coordinator's would: the owner
    fails every pending job with AttachError, the first one's callback waiting for the second."""
    import _array_jobs as jobs

    gate = tmp_path / "gate"
    with Coordinator(instance_name, workers=1, job_modules=["_array_jobs"]) as coord:
        client = shmpool.connect(coord.name)
        seen: list[Any] = []
        finished = threading.Event()
        try:
            running, queued = _queued_behind_a_running_job(client, gate, jobs)
            running.add_done_callback(_waiting_callback(queued, seen, finished))
            client._link.coordinator_alive = lambda: False  # type: ignore[method-assign]
            assert finished.wait(10), "the callback's wait for the queued job hung"
            assert len(seen) == 1 and isinstance(seen[0], AttachError), seen
            assert isinstance(queued.exception(0), AttachError)
            assert isinstance(running.exception(0), AttachError)
        finally:
            del client._link.coordinator_alive
            client.close()
            gate.touch()
