"""A done-callback may wait for another job of the same client.

Found by probing: done-callbacks run in the client's completion thread, the one thread that
drains the client's answers (waiters help only when they are other threads). A callback that
waited for another future of the same client (``submit(...).result()``, ``.exception()``) left
that answer in the ring: ``result(3)`` raised TimeoutError after 3 s although the job had
finished in microseconds, and ``result()`` without a timeout hung for ever. Now a wait in the
completion thread drains the ring itself until its future is done (failing it if the coordinator
is gone meanwhile). Real coordinator, worker and board; deadlines only catch the hang.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import shmpool
from shmpool.coordinator import Coordinator


def test_a_done_callback_can_wait_for_another_job_of_its_client(instance_name):
    with Coordinator(instance_name, workers=1) as coord:
        with shmpool.connect(coord.name) as client:
            seen: list[Any] = []
            finished = threading.Event()

            def chained(done: Future) -> None:  # type: ignore[type-arg]
                try:
                    seen.append(client.submit(pow, 3, 3).result(10))  # TimeoutError after 10 s, before
                    seen.append(client.submit(pow, 3, 4).result(10))
                    seen.append(client.submit(divmod, 1, 0).exception(10).__class__.__name__)
                    seen.append(threading.current_thread().name)
                except BaseException as exc:  # noqa: BLE001  # reported to the test thread
                    seen.append(exc)
                finally:
                    finished.set()

            first = client.submit(pow, 2, 2)
            first.add_done_callback(chained)
            assert first.result(30) == 4
            assert finished.wait(30), "the callback's wait for another job hung"
            assert seen[:3] == [27, 81, "ZeroDivisionError"], seen
            assert seen[3].startswith("shmpool-client"), seen  # it did run in the completion thread
            assert client.submit(pow, 2, 5).result(30) == 32  # the client works on


def test_a_done_callback_waiting_when_the_coordinator_is_gone_fails_at_once(instance_name, tmp_path,
                                                                           user_jobs_importable):
    """The completion thread, busy in the callback, cannot notice the coordinator's death for
    the waiter: the wait does (coordinator_alive is made to say "gone" here, as a SIGKILLed
    coordinator's would), and fails its future with AttachError instead of waiting out 30 s."""
    import _array_jobs as jobs
    from shmpool.errors import AttachError

    gate = tmp_path / "gate"
    with Coordinator(instance_name, workers=1, job_modules=["_array_jobs"]) as coord:
        client = shmpool.connect(coord.name)
        seen: list[Any] = []
        finished = threading.Event()

        def chained(done: Future) -> None:  # type: ignore[type-arg]
            try:
                gated = client.submit(jobs.wait_for_path, str(gate), limit=30.0)
                client._link.coordinator_alive = lambda: False  # type: ignore[method-assign]
                seen.append(gated.result(30))
            except BaseException as exc:  # noqa: BLE001  # reported to the test thread
                seen.append(exc)
            finally:
                finished.set()

        try:
            first = client.submit(pow, 2, 2)
            first.add_done_callback(chained)
            assert first.result(30) == 4
            assert finished.wait(25), "the callback waited out its timeout"
            assert len(seen) == 1 and isinstance(seen[0], AttachError), seen
        finally:
            gate.touch()
            del client._link.coordinator_alive
            client.close()
