"""``call()`` beyond its direct channels keeps its documented timeout: one bound for the slot wait
and the result together, and a request still queued at the timeout is withdrawn.

Found by reading Client.call: with DIRECT_CALLS_MAX calls already waiting on the client's own
channels, a further call goes through submit, and it did ``submit(..., timeout).result(timeout)``:
the full timeout again for the result after the slot wait (up to twice the caller's bound), and
on TimeoutError the request stayed queued and ran later for nobody, where docs/usage.md says a
timed-out call withdraws it. The direct path did both right.

Four threads hold the four direct channels with calls queued behind a gated job, so the fifth
call goes through submit. The timeout its result wait gets is recorded by a wrapper around
JobFuture.result (no wall-clock assert); "withdrawn" is the board's count of cancelled requests.
Real coordinator, worker and board; deadlines only catch hangs.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Any, Callable, Iterator


import pytest

import _array_jobs as jobs
from _introspect import job_counts
from _waiting import wait_for
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.jobs.client import DIRECT_CALLS_MAX
from shmpool.jobs.client_owner import JobFuture

pytestmark = pytest.mark.usefixtures("user_jobs_importable")


def _with_direct_channels_busy(coord: Coordinator, client: shmpool.Client, gate: Path,
                               then: Callable[[], None]) -> list[Any]:
    """Run ``then`` while a gated job runs and DIRECT_CALLS_MAX call()s wait behind it on the
    client's direct channels; the gate opens when ``then`` returns. The calls' results."""
    running = client.submit(jobs.wait_for_path, str(gate), limit=30.0)
    wait_for(lambda: Path(f"{gate}.pid").exists(), 30, "the gated job to start")
    answers: list[Any] = []
    callers = [threading.Thread(target=lambda k=k: answers.append(client.call(pow, 2, k, timeout=60)))
               for k in range(DIRECT_CALLS_MAX)]
    for caller in callers:
        caller.start()
    try:
        wait_for(lambda: job_counts(coord)["queued"] == DIRECT_CALLS_MAX, 30, "the direct calls queued")
        then()
    finally:
        gate.touch()
        for caller in callers:
            caller.join(60)
    assert running.result(30) == 0.0
    return answers


@pytest.fixture
def served(instance_name) -> Iterator[Coordinator]:
    with Coordinator(instance_name, workers=1, job_slots=DIRECT_CALLS_MAX + 3, job_modules=["_array_jobs"]) as coord:
        yield coord


def test_a_call_through_submit_waits_for_its_result_only_what_is_left_of_its_timeout(served, tmp_path, monkeypatch):
    coord = served
    timeout = 30.0
    waits: list[tuple[float | None, float]] = []  # (timeout given to result(), what was left of the call's)
    began: list[float] = []
    real_result = JobFuture.result

    def recorded(self: JobFuture, given: float | None = None) -> Any:
        if threading.current_thread().name == "overflow":
            waits.append((given, began[0] + timeout - time.monotonic()))
        return real_result(self, given)

    monkeypatch.setattr(JobFuture, "result", recorded)
    got: list[Any] = []
    with shmpool.connect(coord.name) as client:
        def run() -> None:
            began.append(time.monotonic())
            got.append(client.call(pow, 3, 3, timeout=timeout))

        overflow = threading.Thread(target=run, name="overflow")
        fillers: list[JobFuture] = []

        def fill_then_call() -> None:
            fillers.extend(client.submit(pow, 5, k) for k in range(2))  # the last two slots
            overflow.start()
            time.sleep(0.3)  # it waits for a slot meanwhile, so its result must get less than `timeout`

        answers = _with_direct_channels_busy(coord, client, tmp_path / "gate", fill_then_call)
        overflow.join(60)
        assert sorted(answers) == [2 ** k for k in range(DIRECT_CALLS_MAX)]
        assert [f.result(30) for f in fillers] == [1, 5]
    assert got == [27]
    assert len(waits) == 1, waits
    given, left = waits[0]
    # `left` is read a few us after `given` was computed: 10 ms of slack, against the 0.3 s (or
    # more) of slot wait that the full timeout given before would have exceeded it by.
    assert given is not None and given <= left + 0.01, (given, left)


def test_a_call_through_submit_that_times_out_withdraws_its_queued_request(served, tmp_path):
    coord = served
    refused: list[BaseException] = []
    with shmpool.connect(coord.name) as client:
        def timed_out_call() -> None:
            with pytest.raises(FuturesTimeout) as waited:
                client.call(pow, 3, 3, timeout=0.2)  # queued behind the gated job: times out
            refused.append(waited.value)
            assert job_counts(coord)["cancelled"] == 1  # withdrawn, before the gate opens

        cancelled_before = job_counts(coord)["cancelled"]
        assert cancelled_before == 0
        _with_direct_channels_busy(coord, client, tmp_path / "gate", timed_out_call)
        assert client.submit(pow, 2, 2).result(30) == 4
    assert len(refused) == 1
