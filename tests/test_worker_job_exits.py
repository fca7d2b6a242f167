"""A job raising SystemExit or KeyboardInterrupt fails its future and leaves its worker serving.

ProcessPoolExecutor delivers ``sys.exit()`` in a job on the future (CPython's
test_deadlock.test_exit_during_func_exec_on_worker). A worker that let it through would die, its
job would be requeued, run a second time and end as WorkerCrashed after two deaths. The exception
arrives as itself (SystemExit with its code, KeyboardInterrupt), not as a JobError naming it.
"""

from __future__ import annotations

import pytest

import _exit_jobs
import shmpool
from shmpool.coordinator import Coordinator


@pytest.mark.parametrize("job, args, kind", [(_exit_jobs.exit_with, (3,), SystemExit),
                                             (_exit_jobs.exit_with, ("bye",), SystemExit),
                                             (_exit_jobs.interrupt, (), KeyboardInterrupt)])
def test_a_job_that_exits_fails_its_future_and_keeps_its_worker(instance_name, user_jobs_importable,
                                                                 job, args, kind):
    with Coordinator(instance_name, workers=1, job_modules=["_exit_jobs"]) as coord:
        with shmpool.connect(instance_name) as client:
            worker = client.submit(_exit_jobs.pid).result(10)
            for via in ("submit", "call"):
                with pytest.raises(BaseException) as raised:
                    if via == "submit":
                        client.submit(job, *args).result(10)
                    else:
                        client.call(job, *args, timeout=10)
                assert type(raised.value) is kind, (via, raised.value)
                expected = list(args) if kind is SystemExit else ["pressed in a job"]
                assert list(raised.value.args) == expected, (via, raised.value.args)
                assert isinstance(raised.value.__cause__, shmpool.RemoteTraceback)
            assert client.submit(_exit_jobs.pid).result(10) == worker  # the same worker serves on
            counts = coord._board.counts()
            assert counts["worker_deaths"] == 0 and counts["requeued"] == 0, counts
            assert counts["failed"] == 2, counts  # each ran once, and failed once
