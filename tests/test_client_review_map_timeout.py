"""``map``'s iterator withdraws the job it was waiting for when its timeout passes, not only the
ones after it.

Found by reading Client.map against concurrent.futures.Executor.map: the iterator pops the next
future and waits for it; on TimeoutError its ``finally`` cancelled the futures still in the list,
but the popped one was no longer there, so its job stayed queued and ran later for nobody (CPython
cancels it too, ``_result_or_cancel``; docs/usage.md: what no worker has taken is withdrawn).

One worker busy with a gated job, a map of three queued behind it, timeout 0.3 s: all three are
withdrawn (the board's cancelled count), none runs. Real coordinator, worker, board.
"""

from __future__ import annotations

from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path

import pytest

import _array_jobs as jobs
from _introspect import job_counts
from _waiting import wait_for
import shmpool
from shmpool.coordinator import Coordinator

pytestmark = pytest.mark.usefixtures("user_jobs_importable")


@pytest.mark.parametrize("chunksize", [1, 2])
def test_a_map_that_times_out_withdraws_every_queued_job(instance_name, tmp_path, chunksize):
    gate = tmp_path / "gate"
    with Coordinator(instance_name, workers=1, job_slots=8, job_modules=["_array_jobs"]) as coord:
        with shmpool.connect(coord.name) as client:
            busy = client.submit(jobs.wait_for_path, str(gate), limit=30.0)
            wait_for(lambda: Path(f"{gate}.pid").exists(), 30, "the gated job to start")
            results = client.map(pow, [2, 3, 4, 5], [2, 2, 2, 2], timeout=0.3, chunksize=chunksize)
            queued = 4 // chunksize
            try:
                with pytest.raises(FuturesTimeout):
                    next(results)
                assert job_counts(coord)["cancelled"] == queued  # before the worker is free
                assert job_counts(coord)["queued"] == queued  # withdrawn ones stay queued until popped
            finally:
                gate.touch()
            assert busy.result(30) == 0.0
            assert client.submit(pow, 2, 3).result(30) == 8
            assert job_counts(coord)["completed"] == 2  # the gated job and the last one: no map job ran
