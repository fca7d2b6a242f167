"""``asubmit`` of a job with a spilled array argument while every slot is busy.

asubmit never blocks the event loop: with no free slot it retries from the loop (every 1 to 20
ms). Each retry used to copy the array into shared memory again and free it when the slot was
refused: a 64 MB argument copied 50 times a second for as long as the board stayed full. Now the
array is placed once, before the first try, and that one copy is posted by every retry; it is
freed if no retry succeeds (timeout, cancel, the client closed) and, once posted, by the job's
end as any spilled argument.

Real coordinator, worker and shared memory. The copies are counted by a wrapper that delegates
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


def _count_posts(monkeypatch: pytest.MonkeyPatch, client: shmpool.Client) -> list[int]:
    posts: list[int] = []
    link = client._link
    real = link.post

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        posts.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(link, "post", counted)
    return posts


def _fill_board(client: shmpool.Client) -> list[asyncio.Future]:
    return [client.asubmit(jobs.sleep_then_total, BUSY_SECONDS, np.ones(3)) for _ in range(2)]


def test_a_retried_asubmit_copies_its_array_once(two_slots, monkeypatch):
    coord = two_slots
    baseline = _live(coord)
    with shmpool.connect(coord.name) as client:
        copies, posts = _count_copies(monkeypatch), _count_posts(monkeypatch, client)

        async def main():
            busy = _fill_board(client)
            await asyncio.sleep(0.05)  # both taken by the workers or queued: no free slot
            late = client.asubmit(jobs.total, LARGE)
            return await asyncio.gather(*busy, late)

        assert asyncio.run(main()) == [3.0, 3.0, float(LARGE.sum())]
        assert len(posts) >= 5, f"the board was never full ({len(posts)} posts): the test proves nothing"
        assert copies == [LARGE.nbytes], copies  # one copy for every retry; the small arrays travel inline
        wait_for(lambda: _live(coord) == baseline, what=f"allocations back to {baseline}")


@pytest.mark.parametrize("give_up", ["timeout", "cancel"])
def test_an_asubmit_given_up_while_retrying_frees_its_placed_array_at_once(two_slots, monkeypatch, give_up):
    coord = two_slots
    baseline = _live(coord)
    with shmpool.connect(coord.name) as client:
        copies = _count_copies(monkeypatch)

        async def main():
            busy = _fill_board(client)
            await asyncio.sleep(0.05)
            if give_up == "timeout":
                with pytest.raises(FuturesTimeout, match="no free job slot"):
                    await client.asubmit(jobs.total, LARGE, timeout=0.15)
            else:
                late = client.asubmit(jobs.total, LARGE)
                await asyncio.sleep(0.1)
                assert _live(coord) == baseline + 1  # placed, retrying: the one copy
                late.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await late
            # Freed now, while the board is still full: not left to the end of the busy jobs.
            assert _live(coord) == baseline, "the placed argument outlived its asubmit"
            return await asyncio.gather(*busy)

        assert asyncio.run(main()) == [3.0, 3.0]
        assert copies == [LARGE.nbytes]
    wait_for(lambda: _live(coord) == baseline, what=f"allocations back to {baseline}")


def test_closing_the_client_while_an_asubmit_retries_frees_its_placed_array(two_slots):
    coord = two_slots
    baseline = _live(coord)
    client = shmpool.connect(coord.name)

    async def main():
        busy = _fill_board(client)
        await asyncio.sleep(0.05)
        late = client.asubmit(jobs.total, LARGE)
        await asyncio.sleep(0.1)
        assert _live(coord) == baseline + 1
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


def test_a_forked_child_dropping_the_retrying_asubmit_leaves_the_parents_array_alone(two_slots):
    """The child of a fork() inherits the parent's retrying coroutine; closing it there (as the
    child's exit or collection would) must not free the parent's placed array, which the
    parent's retry then posts: a worker would read freed, reused memory."""
    coord = two_slots
    baseline = _live(coord)
    with shmpool.connect(coord.name) as client:
        async def main():
            busy = _fill_board(client)
            await asyncio.sleep(0.05)
            late = asyncio.ensure_future(client.asubmit(jobs.total, LARGE))
            await asyncio.sleep(0.1)
            assert _live(coord) == baseline + 1
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
            assert _live(coord) == baseline + 1, "the child freed the parent's placed argument"
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
    """SIGKILLed with its array placed and no slot naming it: lent blocks of a dead owner, freed
    by the coordinator's settling (the state the ``arguments.placed`` fault point also makes)."""
    import signal
    import subprocess
    import sys

    coord = two_slots
    baseline = _live(coord)
    child = subprocess.Popen([sys.executable, "-c", RETRYING_CLIENT, coord.name, "1.0"], text=True,
                             stdout=subprocess.PIPE)  # tests/ on its PYTHONPATH: user_jobs_importable
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "retrying"
        assert _live(coord) == baseline + 1  # placed, on no slot
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    wait_for(lambda: _live(coord) == baseline, what=f"allocations back to {baseline}")
    wait_for(lambda: coord.stats()["jobs"]["free"] == 2, what="every slot free")
