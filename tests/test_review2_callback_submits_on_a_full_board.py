"""A done-callback may submit more jobs than the board has free slots.

Found by the second review of the job path's fixes: 6155abb let a done-callback wait for another
job of its client (the completion thread drains the ring itself meanwhile), but a callback's
submit waits for a free slot, and on a board full of this client's answered jobs the slots are
freed only when the completion thread delivers those answers: the thread waiting in the
callback. ``submit(..., timeout=t)`` raised TimeoutError after t; without a timeout it hung the
completion thread for ever (every later answer of the client with it). Now a wait for a slot in
the completion thread delivers what the ring holds between its slices. Real coordinator, worker
and a two-slot board; the deadlines only catch the hang.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import shmpool
from shmpool.coordinator import Coordinator


def test_a_done_callback_can_submit_more_jobs_than_the_board_has_free_slots(instance_name):
    with Coordinator(instance_name, workers=1, job_slots=2) as coord:
        with shmpool.connect(coord.name) as client:
            seen: list[Any] = []
            finished = threading.Event()

            def fan_out(done: Future) -> None:  # type: ignore[type-arg]
                try:
                    # Two fill the board; the third waits for a slot one of theirs frees.
                    futures = [client.submit(pow, 2, n, timeout=20) for n in range(4)]
                    seen.extend(f.result(20) for f in futures)
                except BaseException as exc:  # noqa: BLE001  # reported to the test thread
                    seen.append(exc)
                finally:
                    finished.set()

            first = client.submit(pow, 2, 2)
            first.add_done_callback(fan_out)
            assert first.result(30) == 4
            assert finished.wait(10), "the callback's submit waited for a slot only its own thread frees"
            assert seen == [1, 2, 4, 8], seen
            assert client.submit(pow, 2, 5).result(30) == 32  # the client works on


def test_a_done_callback_can_map_over_more_items_than_the_board_has_slots(instance_name):
    """map's batches wait for slots in JobBoard.submit_many, the same wait."""
    with Coordinator(instance_name, workers=1, job_slots=2) as coord:
        with shmpool.connect(coord.name) as client:
            seen: list[Any] = []
            finished = threading.Event()

            def mapped(done: Future) -> None:  # type: ignore[type-arg]
                try:
                    seen.extend(client.map(abs, range(-6, 0), timeout=20))
                except BaseException as exc:  # noqa: BLE001  # reported to the test thread
                    seen.append(exc)
                finally:
                    finished.set()

            first = client.submit(pow, 2, 2)
            first.add_done_callback(mapped)
            assert first.result(30) == 4
            assert finished.wait(10), "the callback's map waited for slots only its own thread frees"
            assert seen == [6, 5, 4, 3, 2, 1], seen


def test_a_done_callback_can_submit_spilled_arguments_while_its_client_fills_the_limit(instance_name,
                                                                                       user_jobs_importable):
    """The same wait for room (Link._place): a spilled argument refused while this client's
    own jobs hold the memory limit waits for them to end, and their arguments are freed when
    their answers are delivered: by the thread waiting in the callback."""
    import numpy as np

    import _array_jobs as jobs

    mb = 2 ** 20
    large = np.ones(2 * mb)  # 16 MiB: one fits beside the filler, two do not
    with Coordinator(instance_name, workers=1, memory_limit=64 * mb, job_modules=["_array_jobs"]) as coord:
        with shmpool.connect(coord.name) as client:
            filler = client.reader.instance.table.allocate(40 * mb)  # not a job's: nothing of ours frees it
            seen: list[Any] = []
            finished = threading.Event()

            def two_large(done: Future) -> None:  # type: ignore[type-arg]
                try:
                    futures = [client.submit(jobs.total, large, timeout=20) for _ in range(2)]
                    seen.extend(f.result(20) for f in futures)
                except BaseException as exc:  # noqa: BLE001  # reported to the test thread
                    seen.append(exc)
                finally:
                    finished.set()

            try:
                first = client.submit(pow, 2, 2)
                first.add_done_callback(two_large)
                assert first.result(30) == 4
                assert finished.wait(10), "the callback's submit waited for room only its own thread frees"
                assert seen == [float(large.sum())] * 2, seen
            finally:
                client.reader.instance.table.free(filler)
