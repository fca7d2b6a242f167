"""A job whose exception cannot be encoded fails its future, not its worker.

Found by probing: a job raising an exception whose ``str()`` raises (or whose args hold a str
subclass whose ``str()`` raises, or SystemExit of an object that cannot be shown) made
``encode_error`` raise inside the worker's handler of job failures. That escaped the worker's
loop and killed the worker; the job was requeued, killed the replacement too, and ended as
WorkerCrashed after two worker restarts (12 s of back-off in the probe), where the worker's own
contract is "every job failure goes back to its client, typed".

Now the encoding of an error never raises: what cannot be shown is replaced by a note saying so,
the client gets a JobError naming the job's exception type (or the exception itself where it
is rebuilt), and the worker serves on (same pid). Real coordinator and worker; the deadlines in
result() only catch hangs.
"""

from __future__ import annotations

from typing import Iterator

import pytest

import _review_jobs as jobs
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.errors import JobError, WorkerCrashed
from shmpool.jobs.codec import encode_error, error_info


@pytest.fixture
def served(instance_name, user_jobs_importable) -> Iterator[shmpool.Client]:
    with Coordinator(instance_name, workers=1, job_modules=["_review_jobs"]) as coord:
        with shmpool.connect(coord.name) as client:
            yield client


@pytest.mark.parametrize("job,type_name", [(jobs.raise_unprintable, "UnprintableError"),
                                           (jobs.raise_with_stubborn_argument, "ValueError"),
                                           (jobs.exit_with_unrepresentable_code, "SystemExit")],
                         ids=["str-raises", "arg-str-raises", "exit-code-unshowable"])
def test_an_unencodable_job_error_reaches_the_client_and_the_worker_lives(served, job, type_name):
    client = served
    before = client.call(jobs.pid, timeout=30)
    with pytest.raises(BaseException) as failed:
        client.submit(job).result(60)
    error = failed.value
    assert not isinstance(error, WorkerCrashed), error
    if isinstance(error, JobError):
        assert error.error_type == type_name, error
    else:
        assert type(error).__name__ == type_name, repr(error)
    assert client.call(jobs.pid, timeout=30) == before  # the same worker served on


def test_encode_error_never_raises_and_says_what_could_not_be_shown():
    for raising in (jobs.raise_unprintable, jobs.raise_with_stubborn_argument, jobs.exit_with_unrepresentable_code):
        try:
            raising()
        except BaseException as exc:  # noqa: BLE001  # SystemExit included: that is the point
            info = error_info(encode_error(exc))
        assert info["type"] in ("UnprintableError", "ValueError", "SystemExit"), info
        assert isinstance(info["message"], str) and isinstance(info["traceback"], str), info
        assert info["traceback"], info
