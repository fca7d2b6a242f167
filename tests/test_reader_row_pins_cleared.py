"""A reader row is given back with all its pin words zero, whichever way it goes.

Registration relies on it: a reader claiming a row does not clear its pin and cache words (it
would map a page of each entry's words, shared or not: docs/performance.md, issue 22), so every
way a row is freed must leave them zero: a reader's
close, and the coordinator's sweep of a process killed while it pinned generations (snapshot
pins in the exact words, a context's USERS in the cache word).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.data.region_builder import RegionBuilder
from shmpool.substrate.layout import RD

DIMS = (3, 4)

# Pins generations three ways, says its row, then waits to be killed.
CHILD = """
import sys, time, shmpool
reader = shmpool.attach(sys.argv[1])
snap = reader.snapshot()
held = [snap.load_layer_context(3, 1), reader.load_layer_context(4, 1)]
print(reader._slot, flush=True)
time.sleep(120)
"""


def _seed(folder) -> None:
    for dim in DIMS:
        b = RegionBuilder(dim, f"dim{dim}")
        b.add_layer(1, "hello")
        b.write(folder / f"dim{dim}.region")


def _row_words(control, slot: int) -> np.ndarray:
    """Every word of reader row ``slot`` in the pins section: its pin words and its cache words."""
    return np.concatenate([control.pins[slot].ravel(), control.caches[slot].ravel()])


def _wait_until(check, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds  # generous: catches a hang, not a speed
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_closed_or_killed_readers_row_is_left_with_zero_pin_words(instance_name, tmp_path):
    _seed(tmp_path)
    with Coordinator(instance_name, data_dir=tmp_path, workers=0) as coord:
        with shmpool.attach(coord.name) as watcher:
            control = watcher.instance.control

            # A reader of this process: a snapshot's exact pins and a context's cache word.
            reader = shmpool.attach(coord.name)
            snap = reader.snapshot()
            held = [snap.load_layer_context(3, 1), reader.load_layer_context(4, 1)]
            slot = reader._slot
            assert control.pins[slot].any(), "the reader pinned nothing: the test proves nothing"
            assert control.caches[slot].any(), "the reader cached nothing: the test proves nothing"
            snap.close()
            reader.close()
            del held
            _wait_until(lambda: int(control.readers[slot, RD.PID]) == 0, "the closed reader's row to go")
            assert not _row_words(control, slot).any(), _row_words(control, slot)

            # A reader process killed while it pins: the coordinator's sweep gives its row back.
            child = subprocess.Popen([sys.executable, "-c", CHILD, coord.name], stdout=subprocess.PIPE, text=True)
            try:
                slot = int(child.stdout.readline())
                assert control.pins[slot].any() and control.caches[slot].any()
                os.kill(child.pid, signal.SIGKILL)
                child.wait(30)
                _wait_until(lambda: int(control.readers[slot, RD.PID]) == 0, "the dead reader's row to be swept")
                assert not _row_words(control, slot).any(), _row_words(control, slot)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait(30)

            # The next reader takes a zero row, which it did not write, and pins as it should.
            with shmpool.attach(coord.name) as again:
                assert not _row_words(control, again._slot).any()
                with again.snapshot() as snap2:
                    ctx = snap2.load_layer_context(3, 1)
                    assert bytes(ctx.content) == b"hello"
                    assert control.pins[again._slot].any()
