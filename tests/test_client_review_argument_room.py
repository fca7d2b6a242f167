"""A submit waiting for room for its spilled arguments keeps to its caller's timeout.

When this client's own queued jobs hold spilled arguments that fill the memory limit, a submit
with a spilled array waits for them to end (memory back-pressure, docs/usage.md). That wait
slept ARGUMENT_ROOM_WAIT (50 ms) between tries whatever the caller's timeout: asubmit, which
passes ASYNC_SUBMIT_WAIT (1 ms), blocked its event loop 50 ms, and then failed with
ArgumentTooLarge instead of waiting from the loop for its own timeout; submit(timeout=0.01)
slept 50 ms. Found by reading Link._place against asubmit's documented bound.

Now no sleep is longer than what is left of the caller's timeout, a wait that runs out raises
TimeoutError (as a wait for a slot does; the allocator's refusal as its cause), and asubmit
retries from the loop until room frees or its own timeout passes.

Real coordinator, worker and shared memory; the sleeps are recorded by a stand-in for the
module's ``time`` (same clock, recording sleep). Deadlines in result()/wait_for only catch hangs.
"""

from __future__ import annotations

import asyncio
import threading
import time
import types
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import _array_jobs as jobs
from _waiting import wait_for
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.errors import ArgumentTooLarge
from shmpool.jobs import client, client_link

pytestmark = pytest.mark.usefixtures("user_jobs_importable")

MB = 2 ** 20
LIMIT = 64 * MB
HELD = np.ones(5 * MB, dtype=np.float64)     # 40 MiB of a 64 MiB limit, held by a gated job
WANTED = np.full(5 * MB, 2.0)                # 40 MiB more: no room until the gated job ends


@pytest.fixture
def limited(make_name) -> Iterator[Coordinator]:
    with Coordinator(make_name(), workers=1, job_slots=8, memory_limit=LIMIT, job_modules=["_array_jobs"]) as coord:
        yield coord


def _live(coord: Coordinator) -> int:
    return int(coord.stats()["live_allocations"])


def _record_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str]]:
    """Every time.sleep client_link makes: (seconds, thread name)."""
    sleeps: list[tuple[float, str]] = []

    def sleep(seconds: float) -> None:
        sleeps.append((seconds, threading.current_thread().name))
        time.sleep(seconds)

    stand_in = types.SimpleNamespace(monotonic=time.monotonic, sleep=sleep)
    monkeypatch.setattr(client_link, "time", stand_in)
    return sleeps


def _hold_memory(client: shmpool.Client, gate: Path) -> shmpool.JobFuture:
    """A job of this client holding HELD's 40 MiB until ``gate`` exists (running, so not withdrawn).
    The gate opens by itself after 20 s, so that a failing test ends instead of waiting 60 s."""
    held = client.submit(jobs.wait_for_path, str(gate), HELD, limit=20.0)
    wait_for(lambda: Path(f"{gate}.pid").exists(), 30, "the gated job to start")
    return held


def test_a_submit_waiting_for_argument_room_never_sleeps_past_its_timeout(limited, monkeypatch, tmp_path):
    coord = limited
    baseline = _live(coord)
    gate = tmp_path / "gate"
    with shmpool.connect(coord.name) as c:
        held = _hold_memory(c, gate)
        sleeps = _record_sleeps(monkeypatch)
        timeout = 0.01
        with pytest.raises(FuturesTimeout) as waited:
            c.submit(jobs.total, WANTED, timeout=timeout)
        assert isinstance(waited.value.__cause__, ArgumentTooLarge), repr(waited.value.__cause__)
        assert sleeps, "the submit did wait for room (our own job holds it)"
        assert max(s for s, _ in sleeps) <= timeout, sleeps
        gate.touch()
        assert held.result(60) == float(HELD.sum())
        assert c.submit(jobs.total, WANTED, timeout=60).result(60) == float(WANTED.sum())  # room again
    wait_for(lambda: _live(coord) == baseline, 30, "every spilled argument freed")


def test_asubmit_waiting_for_argument_room_blocks_its_loop_at_most_async_submit_wait(limited, monkeypatch, tmp_path):
    """The loop's thread sleeps at most ASYNC_SUBMIT_WAIT at a time, and the asubmit, with no
    timeout of its own, waits for room (from the loop) instead of failing: it is answered once
    the gated job frees its arguments. One with a timeout raises TimeoutError after it."""
    coord = limited
    baseline = _live(coord)
    gate = tmp_path / "gate"
    with shmpool.connect(coord.name) as c:
        held = _hold_memory(c, gate)
        sleeps = _record_sleeps(monkeypatch)

        async def main() -> tuple[float, BaseException | None]:
            patient = asyncio.ensure_future(c.asubmit(jobs.total, WANTED))
            hasty = asyncio.ensure_future(c.asubmit(jobs.total, WANTED, timeout=0.1))
            ticks = 0
            while not hasty.done():  # the loop runs other work meanwhile
                await asyncio.sleep(0.005)
                ticks += 1
            assert ticks > 1
            hasty_error = hasty.exception()
            assert not patient.done()  # still waiting for room, not failed
            gate.touch()
            return await asyncio.wait_for(patient, 60), hasty_error

        value, hasty_error = asyncio.run(main())
        assert value == float(WANTED.sum())
        assert isinstance(hasty_error, FuturesTimeout), repr(hasty_error)
        in_loop = [s for s, thread in sleeps if thread == threading.main_thread().name]
        assert in_loop, "the asubmits did wait for room in the loop's thread"
        assert max(in_loop) <= client.ASYNC_SUBMIT_WAIT, in_loop
        assert held.result(60) == float(HELD.sum())
    wait_for(lambda: _live(coord) == baseline, 30, "every spilled argument freed")
