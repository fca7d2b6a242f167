"""``Coordinator.stop()`` while another process sits stopped inside the table lock (issue 24):
stop returns within a bounded time and removes the instance's names, and its reaper thread, held
up in that lock past stop's join, never runs into state torn down under it (it once printed
``AttributeError: 'NoneType' object has no attribute 'wait_for_wake'``)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

import _lock_children as children
from _waiting import wait_for
from shmpool.coordinator import Coordinator
from shmpool.substrate.names import list_objects

HANG = 60.0  # seconds: only catches a hang


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read().rsplit(b")", 1)[1].split()[0] == b"T"


@pytest.fixture
def thread_errors(monkeypatch):
    caught: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", caught.append)
    return caught


def test_stop_with_the_table_lock_held_by_a_stopped_process_leaves_the_reaper_nothing_torn(
        instance_name, sample_dir, thread_errors):
    coord = Coordinator(instance_name, data_dir=sample_dir, workers=0).start()
    reader = coord.reader()
    holder = mp.get_context("spawn").Process(target=children.attach_and_stop_in_the_table_lock,
                                             args=(coord.name,))
    holder.start()
    try:
        wait_for(lambda: _stopped(holder.pid), 60, "the holder stopped inside the table lock")
        reaper = coord._reaper
        # A reaper round that needs the table lock now waits in it (the dead-row sweep does).
        time.sleep(3.5)
        started = time.monotonic()
        stopper = threading.Thread(target=coord.stop)
        stopper.start()
        stopper.join(HANG)
        assert not stopper.is_alive(), "stop() hung behind the stopped lock holder"
        took = time.monotonic() - started
        assert list_objects(coord.name) == ([], []), "stop() left names behind"
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel drops its flock: the reaper's wait ends
        holder.join(30)
    if reaper is not None:
        reaper.join(HANG)
        assert not reaper.is_alive()
    assert not thread_errors, [f"{e.thread.name}: {e.exc_type.__name__}: {e.exc_value}" for e in thread_errors]
    del reader, took
