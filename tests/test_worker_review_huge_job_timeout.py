"""A ``job_timeout`` too large for a deadline is no limit, not a failure of every job it bounds.

Found by probing job_timeout with large values: check_job_timeout accepted any number above 0,
and the worker wrote now + timeout * 1e9 ns into the slot's int64 DEADLINE word, so 1e10 s (past
int64 nanoseconds) failed the job in the worker with a bare "ValueError: memoryview: invalid value
for format 'q'", and 1e300 with "OverflowError: cannot convert float infinity to integer"; as
``Coordinator(job_timeout=...)`` it failed every job of the pool. Only float("inf") meant "no
limit". Now anything above MAX_TIMEOUT (1e9 s, ~31 years, as for every other timeout) is no limit,
at the check and in the worker. Real coordinator and worker.
"""

from __future__ import annotations

import math

import pytest

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.jobs.codec import check_job_timeout


@pytest.mark.parametrize("job_timeout", [1e9 + 1, 1e10, 1e12, 1e300, math.inf])
def test_a_huge_job_timeout_runs_the_job_without_a_limit(instance_name, job_timeout):
    with Coordinator(instance_name, workers=1) as coord:
        with shmpool.connect(coord.name) as client:
            assert client.submit(abs, -7, job_timeout=job_timeout).result(30) == 7
            assert client.call(abs, -8, job_timeout=job_timeout, timeout=30) == 8
            assert list(client.map(abs, [-1, -2], job_timeout=job_timeout, timeout=30)) == [1, 2]


def test_a_coordinators_huge_default_job_timeout_runs_every_job(instance_name):
    with Coordinator(instance_name, workers=1, job_timeout=1e300) as coord:
        with shmpool.connect(coord.name) as client:
            assert client.submit(abs, -7).result(30) == 7


def test_check_job_timeout_reads_past_no_limit_as_no_limit():
    assert check_job_timeout(1e12) == math.inf and check_job_timeout(5.0) == 5.0
