"""``asubmit`` of a job with a spilled array argument while every slot is busy.

asubmit never blocks the event loop: with no free slot it retries from the loop (every 1 to 20
ms). Each try of a request with a spilled array copies the array into shared memory, and frees
it again when no slot takes the request: retrying blind, a 64 MB argument was copied 50 times a
second for as long as the board stayed full. Now a try is made only when the board has a free
slot, so the array is copied when a slot can take it, and a waiting asubmit holds no shared
memory (a burst of them never fills the memory limit; keeping one copy per waiting asubmit did).
However an asubmit ends (answered, timed out, cancelled, its client closed, a forked child
dropping it, its client SIGKILLed), nothing is left allocated.

Real coordinator, workers and shared memory. The copies are counted by a wrapper that delegates
to the real ``write_arguments``; "freed" is the allocation table back to its baseline.
Deadlines in wait_for only catch hangs.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Iterator

import numpy as np
import pytest

import _array_jobs as jobs
from _waiting import wait_for
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.errors import ClientClosed
from shmpool.jobs import client_link

BUSY_SECONDS = 0.6                    # both slots held this long: ~30 retries at 20 ms apart
LARGE = np.arange(2 ** 17, dtype=np.float64)  # 1 MiB: far above a quarter of the 64 KiB payload


@pytest.fixture
def two_slots(instance_name, user_jobs_importable) -> Iterator[Coordinator]:
    with Coordinator(instance_name, workers=2, job_slots=2, job_modules=["_array_jobs"]) as coord:
        yield coord


def _live(coord: Coordinator) -> int:
    return int(coord.stats()["live_allocations"])


def _count_copies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every call of the real write_arguments (one copy of a request's spilled arrays), by size."""
    copies: list[int] = []
    real = client_link.write_arguments

    def counted(inst, plan, *args):  # type: ignore[no-untyped-def]
        copies.append(plan.nbytes)
        return real(inst, plan, *args)

    monkeypatch.setattr(client_link, "write_arguments", counted)
    return copies


async def _fill_board(client: shmpool.Client) -> list[asyncio.Future]:
    """Both slots busy for BUSY_SECONDS: submitted, then a moment for the workers to take them."""
    busy = [client.asubmit(jobs.sleep_then_total, BUSY_SECONDS, np.ones(3)) for _ in range(2)]
    await asyncio.sleep(0.05)
    return busy


def test_a_waiting_asubmit_copies_its_array_when_a_slot_can_take_it(two_slots, monkeypatch):
    """Both slots busy for ~0.55 s: the asubmit copies its array when a slot frees, and before
    that only on its rare forced tries (after 0.1 s, then 0.2 s more...: a blocking submitter
    must not starve it), where blind retries every 1-20 ms made ~30 copies."""
    coord = two_slots
    baseline = _live(coord)
    with shmpool.connect(coord.name) as client:
        copies = _count_copies(monkeypatch)

        async def main():
            busy = await _fill_board(client)
            late = asyncio.ensure_future(client.asubmit(jobs.total, LARGE))
            await asyncio.sleep(0.3)
            assert not late.done(), "the board was never full: the test proves nothing"
            assert len(copies) <= 2, copies  # the forced tries at ~0.1 s and ~0.3 s, at most
            return await asyncio.gather(*busy, late)

        assert asyncio.run(main()) == [3.0, 3.0, float(LARGE.sum())]
        assert 1 <= len(copies) <= 4 and set(copies) == {LARGE.nbytes}, copies  # small arrays travel inline
        wait_for(lambda: _live(coord) == baseline, what=f"allocations back to {baseline}")


@pytest.mark.parametrize("arg", ["inline", "spilled"])
def test_a_waiting_asubmit_is_not_starved_by_a_blocking_map(two_slots, arg):
    """A thread's blocking map keeps both slots busy for ~2 s and takes every freed slot within
    microseconds; an asubmit started meanwhile still gets a slot within its 10 s timeout (the
    review's case: looking only for a free slot, it timed out every time)."""
    import threading

    x = np.ones(3) if arg == "inline" else LARGE
    with shmpool.connect(two_slots.name) as client:
        mapper = threading.Thread(target=lambda: list(client.map(jobs.sleep_then_total, [0.02] * 100,
                                                                  [np.ones(3)] * 100)))
        mapper.start()
        try:
            async def main():
                await asyncio.sleep(0.1)
                return await client.asubmit(jobs.total, x, timeout=10)

            assert asyncio.run(main()) == float(x.sum())
        finally:
            mapper.join(60)


def test_a_burst_of_waiting_asubmits_of_large_arrays_all_run(instance_name, user_jobs_importable):
    """120 asubmits of 1 MiB each wait for 2 slots under a 64 MiB memory limit: none holds its
    array while it waits, so none meets a full table (the reviewer's case against one copy per
    waiting asubmit, which placed ~60 and refused the rest)."""
    with Coordinator(instance_name, workers=1, job_slots=2, memory_limit=64 * 2 ** 20,
                     job_modules=["_array_jobs"]) as coord:
        baseline = _live(coord)
        with shmpool.connect(coord.name) as client:
            async def main():
                busy = [client.asubmit(jobs.sleep_then_total, 0.5, LARGE) for _ in range(2)]
                await asyncio.sleep(0.05)
                waiting = [client.asubmit(jobs.total, LARGE, timeout=120) for _ in range(120)]
                return await asyncio.gather(*busy, *waiting)

            assert asyncio.run(main()) == [float(LARGE.sum())] * 122
        wait_for(lambda: _live(coord) == baseline, what=f"allocations back to {baseline}")


def test_asubmit_on_a_closed_client_says_so(two_slots):
    baseline = _live(two_slots)
    client = shmpool.connect(two_slots.name)
    client.close()

    async def main():
        for arg in (np.ones(3), LARGE):  # inline and spilled alike
            with pytest.raises(ClientClosed):
                await client.asubmit(jobs.total, arg)

    asyncio.run(main())
    assert _live(two_slots) == baseline  # nothing copied for a client that cannot submit


@pytest.mark.parametrize("give_up", ["timeout", "cancel"])
def test_an_asubmit_given_up_while_waiting_leaves_nothing_allocated(two_slots, monkeypatch, give_up):
    coord = two_slots
    baseline = _live(coord)
    with shmpool.connect(coord.name) as client:
        copies = _count_copies(monkeypatch)

        async def main():
            busy = await _fill_board(client)
            if give_up == "timeout":
                with pytest.raises(FuturesTimeout, match="no free job slot"):
                    await client.asubmit(jobs.total, LARGE, timeout=0.15)
            else:
                late = client.asubmit(jobs.total, LARGE)
                await asyncio.sleep(0.1)
                assert _live(coord) == baseline  # waiting: nothing copied
                late.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await late
            assert _live(coord) == baseline, "a given-up asubmit left an allocation"
            return await asyncio.gather(*busy)

        assert asyncio.run(main()) == [3.0, 3.0]
        assert len(copies) <= 1, copies  # a forced try at ~0.1 s at most: the board stayed full
    wait_for(lambda: _live(coord) == baseline, what=f"allocations back to {baseline}")


def test_closing_the_client_while_an_asubmit_waits_leaves_nothing_allocated(two_slots):
    coord = two_slots
    baseline = _live(coord)
    client = shmpool.connect(coord.name)

    async def main():
        busy = await _fill_board(client)
        late = client.asubmit(jobs.total, LARGE)
        await asyncio.sleep(0.1)
        assert _live(coord) == baseline
        client.close()
        with pytest.raises(ClientClosed):
            await late
        for fut in busy:
            try:
                await fut
            except ClientClosed:
                pass

    asyncio.run(main())
    wait_for(lambda: _live(coord) == baseline, what=f"allocations back to {baseline}")
    wait_for(lambda: coord.stats()["jobs"]["free"] == 2, what="every slot free")


def test_a_forked_child_dropping_a_waiting_asubmit_leaves_the_parents_job_alone(two_slots):
    """The child of a fork() inherits the parent's waiting coroutine; closing it there (as the
    child's exit or collection would) touches nothing shared, and the parent's asubmit still
    posts its array and gets the right answer."""
    coord = two_slots
    baseline = _live(coord)
    with shmpool.connect(coord.name) as client:
        async def main():
            busy = await _fill_board(client)
            late = asyncio.ensure_future(client.asubmit(jobs.total, LARGE))
            await asyncio.sleep(0.1)
            assert _live(coord) == baseline
            pid = os.fork()
            if pid == 0:  # the child: drop the inherited coroutine, then leave without cleanup
                code = 0
                try:
                    late.get_coro().close()
                except BaseException:
                    code = 1
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert _live(coord) == baseline, "the child allocated in the parent's instance"
            return await asyncio.gather(*busy, late)

        assert asyncio.run(main()) == [3.0, 3.0, float(LARGE.sum())]
    wait_for(lambda: _live(coord) == baseline, what=f"allocations back to {baseline}")


RETRYING_CLIENT = """
import asyncio, sys
import numpy as np
import shmpool, _array_jobs
client = shmpool.connect(sys.argv[1])
async def main():
    busy = [client.asubmit(_array_jobs.sleep_then_total, float(sys.argv[2]), np.ones(3)) for _ in range(2)]
    await asyncio.sleep(0.05)
    late = client.asubmit(_array_jobs.total, np.arange(2 ** 17, dtype=np.float64))
    await asyncio.sleep(0.1)
    print("retrying", flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


def test_a_client_killed_while_its_asubmit_retries_leaks_nothing(two_slots):
    """SIGKILLed while its asubmit waits (nothing copied) and its two jobs run: their slots and
    everything else come back (a client killed with an array copied and on no slot is the
    ``arguments.placed`` fault point's case, tests/test_client_array_arguments.py)."""
    import signal
    import subprocess
    import sys

    coord = two_slots
    baseline = _live(coord)
    child = subprocess.Popen([sys.executable, "-c", RETRYING_CLIENT, coord.name, "1.0"], text=True,
                             stdout=subprocess.PIPE)  # tests/ on its PYTHONPATH: user_jobs_importable
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "retrying"
        assert _live(coord) == baseline  # waiting: nothing copied yet
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    wait_for(lambda: _live(coord) == baseline, what=f"allocations back to {baseline}")
    wait_for(lambda: coord.stats()["jobs"]["free"] == 2, what="every slot free")


def test_a_waiting_asubmit_hears_a_stopping_coordinator_before_its_drain_ends(instance_name, user_jobs_importable,
                                                                                tmp_path):
    """The coordinator stops while two jobs hold both slots: the waiting asubmit raises
    AttachError as soon as the board stops accepting, not after the running jobs end (they wait
    for a gate the test opens only after the asubmit has raised; a hang fails the test)."""
    import threading

    gate = str(tmp_path / "gate")
    coord = Coordinator(instance_name, workers=2, job_slots=2, job_modules=["_array_jobs"])
    coord.start()
    stopper = threading.Thread(target=coord.stop)
    try:
        with shmpool.connect(coord.name) as client:
            busy = [client.submit(jobs.wait_for_path, gate) for _ in range(2)]
            wait_for(lambda: coord.stats()["jobs"]["free"] == 0, what="both slots taken")

            async def main():
                late = asyncio.ensure_future(client.asubmit(jobs.total, LARGE, timeout=60))
                await asyncio.sleep(0.1)
                stopper.start()
                with pytest.raises(shmpool.AttachError, match="stopping"):
                    await late

            asyncio.run(main())
            open(gate, "w").close()
            for f in busy:
                f.result(30)
    finally:
        open(gate, "w").close()
        if stopper.ident is None:
            coord.stop()
        else:
            stopper.join(60)
