"""A free-threaded CPython running without its GIL is refused, before anything is created.

A reader's lookup announces a generation in its cache word and relies on the GIL for "no other
thread of this process touches the word until the lookup leaves" (shmpool/_core/_lookup.pyx);
without the GIL two threads' lookups interleave and the coordinator may reclaim a generation a
thread is still reading: wrong bytes. The interpreter is simulated (``sys._is_gil_enabled``,
CPython 3.13+'s own probe); the refusal is the real code path of creating and attaching.
"""

from __future__ import annotations

import os
import sys

import pytest

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.errors import PlatformUnsupported
from shmpool.substrate import platform
from shmpool.substrate.instance import SharedInstance


def _without_gil(monkeypatch) -> None:
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)


def test_this_interpreter_has_its_gil():
    assert platform.gil_enabled()


def test_creating_without_the_gil_is_refused_and_leaves_nothing(instance_name, monkeypatch):
    _without_gil(monkeypatch)
    with pytest.raises(PlatformUnsupported, match=r"the GIL: .*-X gil=1") as caught:
        Coordinator(instance_name, workers=0).start()
    assert caught.value.capability == "the GIL"
    assert not [p for p in os.listdir("/dev/shm") if instance_name in p]


def test_attaching_without_the_gil_is_refused(instance_name, monkeypatch):
    with Coordinator(instance_name, workers=0) as coord:
        with monkeypatch.context() as patch:
            _without_gil(patch)
            with pytest.raises(PlatformUnsupported, match="free-threaded"):
                shmpool.attach(coord.name)
            with pytest.raises(PlatformUnsupported):
                SharedInstance.attach(coord.name)
        with shmpool.attach(coord.name) as reader:  # the same process, its GIL back: attaches
            assert reader.name == coord.name and not reader.closed
