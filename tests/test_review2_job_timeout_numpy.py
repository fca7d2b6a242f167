"""job_timeout takes any real number of seconds, numpy's too, as every timeout does.

Found by the second review: e0e6022 made one check for every ``timeout`` (numpy numbers
included, shmpool/substrate/timeouts.py), but ``job_timeout`` kept its own, which took only
int and float: ``job_timeout=np.int64(5)`` or ``np.float32(5)`` (a count or a duration read from
an array) was refused with InvalidArgument saying it must be "seconds, a number above 0", which
it is. Real coordinator and worker for the jobs; the check itself in-process.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.errors import InvalidArgument
from shmpool.jobs.codec import check_job_timeout


@pytest.mark.parametrize("value", [np.int64(5), np.float32(5.0), np.int32(5), np.uint8(5)])
def test_a_numpy_job_timeout_is_seconds(value):
    assert check_job_timeout(value) == 5.0
    assert type(check_job_timeout(value)) is float


@pytest.mark.parametrize("value", [np.float32("nan"), np.int64(0), np.float64(-1.0), np.bool_(True), True, "5"])
def test_a_job_timeout_that_is_no_positive_number_is_still_refused(value):
    with pytest.raises(InvalidArgument):
        check_job_timeout(value)


def test_a_numpy_job_timeout_bounds_a_job(instance_name):
    with Coordinator(instance_name, workers=1) as coord:
        with shmpool.connect(coord.name) as client:
            assert client.submit(pow, 2, 3, job_timeout=np.int64(30)).result(30) == 8
            assert client.call(pow, 2, 4, job_timeout=np.float32(30)) == 16
            assert check_job_timeout(np.float64(2e9)) == math.inf
