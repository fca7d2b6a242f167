"""``Coordinator(workers=...)`` takes what ``shmpool serve --workers`` takes: 0..MAX_WORKERS or None."""

from __future__ import annotations

import pytest

from shmpool.coordinator import Coordinator
from shmpool.errors import InvalidArgument, ShmPoolError
from shmpool.substrate.limits import MAX_WORKERS


@pytest.mark.parametrize("workers", [-1, -100, MAX_WORKERS + 1, True, 2.5, "2"])
def test_a_bad_worker_count_is_refused_before_anything_starts(instance_name, workers):
    with pytest.raises(InvalidArgument) as raised:
        Coordinator(instance_name, workers=workers)
    assert isinstance(raised.value, ShmPoolError) and isinstance(raised.value, ValueError)
    assert raised.value.argument == "workers" and raised.value.value == workers
    assert str(MAX_WORKERS) in str(raised.value)


@pytest.mark.parametrize("workers", [0, 1, MAX_WORKERS, None])
def test_a_good_worker_count_is_accepted(instance_name, workers):
    coord = Coordinator(instance_name, workers=workers)
    assert coord.worker_count >= 0
