"""A failed JobFuture is freed by reference counting, without the cycle collector.

``result()`` re-raises the job's error; its traceback holds the frame of ``result()``, whose
``self`` is the future holding that error: a cycle, unless the frame lets go of ``self`` as
CPython's own ``Future.result`` does. Everything the caller's frame holds then waits for a
gc pass: in tests/_small_shm.py a spawn context's Event and Queue stayed in /dev/shm as
``sem.mp-*`` names after the coordinator stopped.
"""

from __future__ import annotations

import gc
import weakref

import pytest

import shmpool
from shmpool.coordinator import Coordinator


def test_a_failed_future_is_freed_without_the_cycle_collector(instance_name):
    with Coordinator(instance_name, workers=1, job_modules=["_jobs"]) as coord:
        with shmpool.connect(instance_name) as client:
            assert client.submit("ping").result(30) == coord.stats()["workers"]["pids"][0]
            gc.collect()
            gc.disable()
            try:
                future = client.submit("_jobs:boom", "on purpose")
                with pytest.raises(ValueError, match="on purpose"):  # the job's own error, rebuilt
                    future.result(30)
                ref = weakref.ref(future)
                del future
                assert ref() is None, "the failed future is still referenced: a cycle through its traceback"
            finally:
                gc.enable()
