"""``attach(timeout=)`` and ``connect(timeout=)`` against a stopped holder of the table lock
(issue 24): each raises LockTimeout naming the holder within its timeout, instead of waiting
as long as the holder stays stopped."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

import _lock_children as children
import shmpool
from _waiting import wait_for
from shmpool import LockTimeout
from shmpool.coordinator import Coordinator

HANG = 15.0  # seconds: only catches a hang (the calls below take their 1 s timeout)


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read().rsplit(b")", 1)[1].split()[0] == b"T"


@pytest.fixture
def stopped_holder(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=0) as coord:
        proc = mp.get_context("spawn").Process(target=children.attach_and_stop_in_the_table_lock,
                                               args=(coord.name,))
        proc.start()
        try:
            wait_for(lambda: _stopped(proc.pid), 60, "the holder stopped inside the table lock")
            assert coord._inst.lock.owner() == proc.pid
            yield coord, proc.pid
        finally:
            os.kill(proc.pid, signal.SIGKILL)  # the kernel drops its flock: the coordinator goes on
            proc.join(30)


@pytest.mark.parametrize("call", ["attach", "connect"])
def test_a_stopped_table_lock_holder_times_attach_and_connect_out_naming_it(stopped_holder, call):
    coord, holder = stopped_holder
    started = time.monotonic()
    with pytest.raises(LockTimeout) as caught:
        if call == "attach":
            shmpool.attach(coord.name, timeout=1)
        else:
            shmpool.connect(coord.name, timeout=1)
    waited = time.monotonic() - started
    assert waited < HANG
    assert caught.value.owner_pid == holder and str(holder) in str(caught.value)
    assert caught.value.waited >= 0.9


def test_attach_with_a_timeout_succeeds_once_the_holder_is_gone(stopped_holder):
    coord, holder = stopped_holder
    os.kill(holder, signal.SIGKILL)
    with shmpool.attach(coord.name, timeout=HANG) as reader:
        assert reader.dimensions()
