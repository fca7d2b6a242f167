"""Sweeping the shared objects of every instance whose coordinator died (OOM killer, SIGKILL).

A coordinator killed with its whole process group (a container OOM, a killed test worker) leaves
its names in /dev/shm until someone reuses the name or runs ``shmpool cleanup NAME``. The sweep
finds such instances by prefix and removes them, and never touches a live or a starting one.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import _reader_children as children
from shmpool.coordinator import Coordinator
from shmpool.substrate.instance import sweep_dead
from shmpool.substrate.names import instance_names, list_objects


def _killed_coordinator(name: str, data_dir, workers: int = 1) -> None:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=children.run_coordinator, args=(name, str(data_dir), ready, stop, workers))
    proc.start()
    assert ready.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)


def test_the_names_of_a_sigkilled_coordinator_are_swept_and_a_live_ones_are_kept(make_name, sample_dir):
    dead, live = make_name(), make_name()
    _killed_coordinator(dead, sample_dir)
    segments, semaphores = list_objects(dead)
    assert segments and semaphores  # what the OOM killer leaves behind: control, pools, jobs, ch*
    with Coordinator(live, data_dir=sample_dir, workers=0):
        prefix = os.path.commonprefix([dead, live])
        assert {dead, live} <= set(instance_names(prefix))
        removed = sweep_dead(prefix, min_age=0)
        assert removed == [dead]
        assert list_objects(dead) == ([], [])
        assert list_objects(live)[0]  # the live instance keeps every object


def test_a_dead_instance_younger_than_min_age_is_left_for_later(make_name, sample_dir):
    # A coordinator that is starting has objects but no valid header yet: the age guard is what
    # keeps a sweep in another process from removing it.
    dead = make_name()
    _killed_coordinator(dead, sample_dir, workers=0)
    assert sweep_dead(dead, min_age=3600) == []
    assert list_objects(dead)[0]
    assert sweep_dead(dead, min_age=0) == [dead]


def test_an_instance_of_another_layout_version_is_never_swept(make_name, sample_dir, monkeypatch):
    # Another shmpool release cannot judge that instance's coordinator (attach refuses its
    # layout), so the sweep must not take "cannot attach" for "dead" there.
    from shmpool.substrate import instance as instance_module
    dead = make_name()
    _killed_coordinator(dead, sample_dir, workers=0)
    monkeypatch.setattr(instance_module, "LAYOUT_VERSION", instance_module.LAYOUT_VERSION + 1)
    assert sweep_dead(dead, min_age=0) == []
    assert list_objects(dead)[0]
    monkeypatch.undo()
    assert sweep_dead(dead, min_age=0) == [dead]
