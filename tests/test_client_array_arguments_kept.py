"""A job may keep a view of its spilled array argument past its return (shmpool/jobs/arg_spill.py).

The client writes a large argument once into lent blocks and frees them once it has decoded the
answer. A job that keeps the read-only view it was handed (``KEPT[key] = x``, or only ``x[1::2]``,
a reshape, a list holding it) would then read whatever the table put there next: wrong bytes,
silently. Here the kept view is read back by a later job of the same worker (one worker, so
every job runs there) after the client's next jobs allocated and filled other arguments of the
same size, which land on freed blocks first: its bytes must be the original ones. A job that
keeps nothing frees exactly as before; and when the last view goes the worker frees the blocks.
After each test: every slot FREE, no channel held, allocations back to their baseline, nothing
of the instance left in /dev/shm. Deadlines in wait_for only catch hangs.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import _kept_jobs as jobs
import shmpool
from _introspect import job_board
from _waiting import wait_for
from _kept_checks import WAIT, assert_board_whole, live_allocations
from shmpool.coordinator import Coordinator
from shmpool.jobs.jobs_layout import SC, SlotState
from shmpool.substrate.names import list_objects

pytestmark = pytest.mark.usefixtures("user_jobs_importable")

MB = 2 ** 20
N = MB  # float64 elements: 8 MiB arguments, far above a slot's spill threshold


def _sha(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


@pytest.fixture
def served(make_name: Callable[[], str]) -> Iterator[tuple[Coordinator, str, int]]:
    """A coordinator with one worker running tests/_kept_jobs.py: (it, its name, allocations at rest)."""
    name = make_name()
    with Coordinator(name, workers=1, job_modules=["_kept_jobs"]) as coord:
        baseline = live_allocations(coord)
        yield coord, name, baseline
        assert_board_whole(coord, baseline)
    assert list_objects(name) == ([], [])


def reuse_freed_blocks(client: Any, rounds: int = 3) -> None:
    """The client's next jobs: arguments of the same size, other bytes (each lands on blocks the
    table freed last, those of a kept argument if they were freed)."""
    for k in range(rounds):
        filler = np.full(N, 1000.0 + k)
        assert client.submit(jobs.total, filler).result(60) == float(filler.sum())


KEEPS: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {
    "whole": lambda x: [x],
    "strided": lambda x: [x[1::2]],
    "reshaped": lambda x: [x.reshape(4, -1).T],
    "in_a_list": lambda x: [x],
}


@pytest.mark.parametrize("how", list(KEEPS))
def test_a_kept_argument_reads_its_own_bytes_after_the_client_reused_the_memory(
        served: tuple[Coordinator, str, int], how: str) -> None:
    """A job keeps (a view derived from) its 8 MiB argument and returns; three more jobs of the
    same client spill 8 MiB arguments of other bytes; a later job of the same worker reads the
    kept array: the original bytes. The blocks stay allocated while the worker holds the view
    (one allocation above the baseline) and are freed once the job's module lets go of it."""
    coord, name, baseline = served
    x = np.arange(N, dtype=np.float64)
    with shmpool.connect(name) as client:
        pid = client.submit(jobs.keep, "a", x, how).result(60)
        reuse_freed_blocks(client)
        assert client.submit(jobs.digest, "a").result(60) == (pid, _sha(KEEPS[how](x)))
        assert live_allocations(coord) == baseline + 1  # the kept argument, held by the worker
        assert client.submit(jobs.forget, "a").result(60) == pid
        wait_for(lambda: live_allocations(coord) == baseline, what="the kept argument freed once nothing views it", seconds=WAIT)
        reuse_freed_blocks(client, rounds=1)


def test_a_job_that_keeps_nothing_frees_its_argument_with_the_answer(served: tuple[Coordinator, str, int]) -> None:
    """The usual job: the client frees the argument with the answer, as before; nothing held,
    no slot marked kept."""
    coord, name, baseline = served
    x = np.arange(N, dtype=np.float64)
    with shmpool.connect(name) as client:
        for _ in range(3):
            assert client.submit(jobs.total, x).result(60) == float(x.sum())
            assert live_allocations(coord) == baseline  # freed before the future was given its result
    assert not job_board(coord).v.slots[:, SC.ARG_KEPT].any()


def test_a_job_that_raises_without_keeping_frees_its_argument_with_the_answer(
        served: tuple[Coordinator, str, int]) -> None:
    """The error's traceback held the job's frames (and their views of the argument) only until
    the worker encoded it: nothing is kept, the client frees the argument with the answer."""
    coord, name, baseline = served
    x = np.arange(N, dtype=np.float64)
    with shmpool.connect(name) as client:
        with pytest.raises(ValueError, match="failed with"):
            client.submit(jobs.fail_using, x).result(60)
        assert live_allocations(coord) == baseline
    assert not job_board(coord).v.slots[:, SC.ARG_KEPT].any()


def test_a_job_that_keeps_its_argument_and_raises_keeps_it_too(served: tuple[Coordinator, str, int]) -> None:
    """An error's answer frees nothing the job kept: the view still reads the original bytes."""
    coord, name, baseline = served
    x = np.arange(N, dtype=np.float64) * 3
    with shmpool.connect(name) as client:
        with pytest.raises(RuntimeError, match="failed after keeping"):
            client.submit(jobs.keep_then_fail, "b", x).result(60)
        reuse_freed_blocks(client)
        assert client.submit(jobs.digest, "b").result(60)[1] == _sha([x])
        client.submit(jobs.forget, "b").result(60)
        wait_for(lambda: live_allocations(coord) == baseline, what="the kept argument freed once nothing views it", seconds=WAIT)


def test_a_kept_argument_with_a_spilled_result_stays_the_workers(served: tuple[Coordinator, str, int]) -> None:
    """The answer spills too (8 MiB): the client frees the result's blocks after decoding it, and
    not the argument's, which the worker holds for the kept view."""
    coord, name, baseline = served
    x = np.arange(N, dtype=np.float64) + 0.5
    with shmpool.connect(name) as client:
        assert np.array_equal(client.submit(jobs.keep_and_double, "r", x).result(60), x * 2)
        assert live_allocations(coord) == baseline + 1
        reuse_freed_blocks(client)
        assert client.submit(jobs.digest, "r").result(60)[1] == _sha([x])
        client.submit(jobs.forget, "r").result(60)
        wait_for(lambda: live_allocations(coord) == baseline, what="the kept argument freed once forgotten", seconds=WAIT)


def test_many_kept_arguments_are_each_held_and_each_freed(served: tuple[Coordinator, str, int]) -> None:
    """Four jobs keep four arguments in one list: each stays exact while the list holds it; all
    are freed when the list goes."""
    coord, name, baseline = served
    xs = [np.full(N, float(k)) + np.arange(N) for k in range(4)]
    with shmpool.connect(name) as client:
        for x in xs:
            client.submit(jobs.keep, "many", x, "in_a_list").result(60)
        reuse_freed_blocks(client)
        assert client.submit(jobs.digest, "many").result(60)[1] == _sha(xs)
        assert live_allocations(coord) == baseline + 4
        client.submit(jobs.forget, "many").result(60)
        wait_for(lambda: live_allocations(coord) == baseline, what="every kept argument freed", seconds=WAIT)


def test_a_late_kept_answer_dropped_by_a_call_that_gave_up_frees_nothing(
        served: tuple[Coordinator, str, int], tmp_path: Path) -> None:
    """``call`` gives up on a job that then keeps its argument; the next call on that thread's
    channel drops the late answer (Link.discard_answer) without freeing what the worker holds."""
    coord, name, baseline = served
    x = np.arange(N, dtype=np.float64) - 5
    gate = tmp_path / "gate"
    with shmpool.connect(name) as client:
        assert client.call(jobs.total, np.ones(4), timeout=60) == 4.0  # the worker warm: it takes the next job at once
        with pytest.raises(FuturesTimeout):
            client.call(jobs.keep_gated, str(gate), "late", x, timeout=2.0)
        assert Path(f"{gate}.pid").exists()  # it gave up on a running job (a queued one is withdrawn)
        completed = coord.stats()["jobs"]["completed"]
        gate.touch()
        try:
            wait_for(lambda: coord.stats()["jobs"]["completed"] == completed + 1, what="the late kept answer delivered",
                     seconds=WAIT)
        except AssertionError as exc:  # say where the job is: seen once on a machine at load 30
            board = job_board(coord)
            rows = [board.slot_row(s) for s in range(board.slot_count) if board.slot_row(s).seq]
            raise AssertionError(f"{exc}; jobs {coord.stats()['jobs']}; slots {rows}") from None
        # Dropped by the client's tidy of idle channels or, if that has not run yet, by this call.
        assert client.call(jobs.digest, "late", timeout=60)[1] == _sha([x])
        assert live_allocations(coord) == baseline + 1
        reuse_freed_blocks(client)
        assert client.call(jobs.digest, "late", timeout=60)[1] == _sha([x])
        client.call(jobs.forget, "late", timeout=60)
        wait_for(lambda: live_allocations(coord) == baseline, what="the kept argument freed once forgotten", seconds=WAIT)


DERIVED: dict[str, Callable[[np.ndarray], Any]] = {
    "itself": lambda x: x,
    "a slice": lambda x: x[1::2],
    "a transpose": lambda x: x.T,
    "a reshape": lambda x: x.reshape(-1),
    "a dtype view": lambda x: x.view(np.uint8),
    "np.asarray": np.asarray,
    "a memoryview": memoryview,
    "np.frombuffer of it": lambda x: np.frombuffer(x, np.uint8),
    "a slice of a slice": lambda x: x[2:][::3][1:],
    "a list holding it": lambda x: [x],
}


@pytest.mark.parametrize("derive", list(DERIVED))
def test_the_worker_sees_every_view_derived_from_a_spilled_argument_as_keeping_it(derive: str) -> None:
    """How the worker tells that a job kept something (codec.ArgumentSource): whatever a job
    derives from its spilled argument without copying keeps the request's memory alive, and
    nothing does once it is dropped. Guards the one numpy behaviour the fix rests on (the base
    of a view of a view is the first ndarray, never collapsed past it to the mapping)."""
    from shmpool.jobs.codec import ArgumentSource, decode_job, decoder, encode_spilling
    x = np.arange(4096, dtype=np.float64).reshape(64, 64)
    data, plan = encode_spilling("job", [x], {}, 0)
    assert plan is not None
    memory_bytes = bytearray(plan.nbytes)  # stands in for the pool blocks
    for spilled in plan.arrays:
        place = np.ndarray(spilled.array.shape, spilled.array.dtype, buffer=memory_bytes, offset=spilled.offset,
                           order=spilled.order)
        place[...] = spilled.array
    source = ArgumentSource()
    memory = source.lend(memoryview(memory_bytes))
    request = decode_job(data, decode=decoder(None, source))
    source.memory = None
    kept = DERIVED[derive](request.args[0])
    del request
    assert memory() is not None  # what the job keeps holds the memory...
    del kept
    assert memory() is None  # ...and nothing else does


def test_a_channel_released_with_a_kept_answer_unread_frees_nothing_the_worker_holds(
        served: tuple[Coordinator, str, int], tmp_path: Path) -> None:
    """A client lets go of its channel while a kept answer waits unread in its ring (a call()
    channel released at close, say): the channel's release frees the slot but not the argument
    (Link.release_channel's "ended" list skips what ARG_KEPT marks). Driven through the client's
    Link directly, so no completion thread reads the ring first."""
    from shmpool.jobs.client_link import Link
    from shmpool.jobs.codec import RequestFlags
    coord, name, baseline = served
    x = np.arange(N, dtype=np.float64) * 7
    gate = tmp_path / "gate"
    job = "_kept_jobs:keep_gated"
    link = Link(name)
    try:
        channel = link.board.claim_channel(timeout=10)
        slot, seq = link.post(channel, job, link.encode(job, [str(gate), "released", x], {}, flags=RequestFlags.PLAIN),
                              60)
        gate.touch()
        board = job_board(coord)
        wait_for(lambda: board.slot_row(slot).state == SlotState.DONE and board.slot_row(slot).arg_kept == seq,
                 what="the kept answer in the ring", seconds=WAIT)
        link.release_channel(channel)
    finally:
        link.drop()
    assert board.slot_row(slot).state == SlotState.FREE
    assert live_allocations(coord) == baseline + 1
    with shmpool.connect(name) as client:
        reuse_freed_blocks(client)
        assert client.submit(jobs.digest, "released").result(60)[1] == _sha([x])
        client.submit(jobs.forget, "released").result(60)
        wait_for(lambda: live_allocations(coord) == baseline, what="the kept argument freed once forgotten", seconds=WAIT)
