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
