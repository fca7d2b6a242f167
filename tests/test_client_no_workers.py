"""``shmpool.connect`` to an instance that runs no workers says so, and how to start some."""

from __future__ import annotations

import pytest

import shmpool
from shmpool.coordinator import Coordinator


def test_connect_to_an_instance_without_workers_says_it_runs_none_and_how_to_start_some(instance_name):
    with Coordinator(instance_name, workers=0):
        with pytest.raises(shmpool.AttachError) as err:
            shmpool.connect(instance_name)
        with shmpool.attach(instance_name):  # the data is still there to read
            pass
    message = str(err.value)
    assert "runs no workers" in message and "workers=" in message and "--workers" in message, message
    assert err.value.name == instance_name


def test_connect_to_no_instance_at_all_still_says_it_does_not_exist(instance_name):
    with pytest.raises(shmpool.AttachError) as err:
        shmpool.connect(instance_name)
    assert "does not exist" in str(err.value) and "workers" not in str(err.value)
