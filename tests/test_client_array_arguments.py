"""Array arguments of jobs (issue 23): small ones inline, large ones spilled into shared memory.

An array argument above a quarter of ``job_payload`` never goes into the slot: the client copies
it once into one table allocation per request, the worker reads it there as a read-only ndarray
view (shmpool/jobs/arg_spill.py). These tests run real coordinators and workers and check: values,
dtypes, shapes and orders arrive exact, from 3 elements to 64 MB; the worker sees shared memory,
not a copy; a large argument and a large result in one job; many at once, and a map whose
arguments together exceed the memory limit; and that every spilled argument is freed however its
job ends: answered, cancelled, timed out, its client SIGKILLed mid-submit, after submit or while
the job runs, its worker SIGKILLed while running it, or refused by the memory limit. "Freed" is
checked the chaos campaign's way: the allocation table back to its baseline, every slot FREE on a
whole free stack, no client channel left, and after the stop nothing of the instance in /dev/shm
or the runtime folder. Deadlines in wait_for only catch hangs.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import _array_jobs as jobs
from _array_clients import submitting_client
import shmpool
from _introspect import job_board
from conftest import TEST_PREFIX, TESTS
from _waiting import wait_for
from shmpool.coordinator import Coordinator
from shmpool.errors import ArgumentTooLarge, LimitExceeded, RequestTooLarge, ShmPoolError
from shmpool.jobs.jobs_layout import SlotState
from shmpool.substrate.names import list_objects

pytestmark = pytest.mark.usefixtures("user_jobs_importable")

MB = 2 ** 20


def _runtime_files(name: str) -> list[str]:
    return sorted(p.name for p in Path(os.environ["SHMPOOL_RUNTIME_DIR"]).iterdir() if p.name.startswith(name + "."))


def _live(coord: Coordinator) -> int:
    return int(coord.stats()["live_allocations"])


def _assert_board_whole(coord: Coordinator, baseline: int) -> None:
    """What the chaos campaign asserts of a board after its kills: every slot FREE on a whole free
    stack, no channel held, nobody waiting; and no allocation left beyond ``baseline``."""
    board = job_board(coord)
    wait_for(lambda: coord.stats()["jobs"]["free"] == board.slot_count, what="every slot free")
    wait_for(lambda: coord.stats()["jobs"]["clients"] == 0, what="every channel released")
    wait_for(lambda: _live(coord) == baseline, what=f"allocations back to {baseline}")
    states = {board.slot_row(s).state for s in range(board.slot_count)}
    assert states == {SlotState.FREE}, states
    assert sorted(board.v.free[:board.slot_count].tolist()) == list(range(board.slot_count))


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[Coordinator, str]]:
    """One coordinator with 2 workers that run tests/_array_jobs.py for the tests that do not kill
    anything (each used to start its own: two worker interpreters apiece, most of this module's
    CPU); empty after its stop (/dev/shm and the runtime folder)."""
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"  # module-scoped, so not from the make_name fixture
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        with Coordinator(name, workers=2, job_modules=["_array_jobs"]) as coord:
            yield coord, name
    assert list_objects(name) == ([], [])
    assert _runtime_files(name) == []


@pytest.fixture
def served(shared: tuple[Coordinator, str]) -> Iterator[tuple[Coordinator, str]]:
    """The shared coordinator, checked whole after the test: every slot free, no channel, no
    allocation beyond what it had before the test."""
    coord, name = shared
    baseline = _live(coord)
    yield coord, name
    _assert_board_whole(coord, baseline)


@pytest.fixture
def own(make_name) -> Iterator[tuple[Coordinator, str]]:
    """A coordinator of the test's own, for the tests that SIGKILL a client or a worker: a kill
    that left the board broken fails that test alone. Checked whole after the test and empty
    after its stop."""
    name = make_name()
    with Coordinator(name, workers=2, job_modules=["_array_jobs"]) as coord:
        baseline = _live(coord)
        yield coord, name
        _assert_board_whole(coord, baseline)
    assert list_objects(name) == ([], [])
    assert _runtime_files(name) == []


def _arrays() -> list[np.ndarray]:
    """Several dtypes, C and F order, from 3 elements (inline) to past the spill threshold."""
    made = []
    for n in (3, 3000, 300_000):  # 16 KiB is the threshold with the default 64 KiB slot
        for dtype in ("<f8", "<i2", ">u4", "c8", "?", "<M8[ms]", "S3"):
            flat = np.arange(2 * n).astype(dtype) if dtype[0] not in "S" else np.array(
                [str(i % 1000).encode() for i in range(2 * n)], dtype=dtype)
            grid = flat.reshape(2, n)
            made += [grid, np.asfortranarray(grid)]
    made.append(np.zeros(5000, dtype=[("x", "<f4"), ("n", "<i8")]))       # structured, 60 KB
    made.append(np.arange(200_000, dtype=np.float64)[::2])                # not contiguous: gathered
    return made


ARRAYS = _arrays()


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype.str}-{a.shape}-{'F' if a.flags.f_contiguous and a.ndim > 1 else 'C'}")
def test_an_array_argument_of_any_size_dtype_and_order_arrives_exact(served, array):
    coord, name = served
    with shmpool.connect(name) as client:
        back = client.submit(jobs.same, array).result(60)
        assert type(back) is np.ndarray and back.dtype == array.dtype and back.shape == array.shape
        assert np.array_equal(back, array)
        if array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous:
            assert back.flags.f_contiguous
        seen = client.call(jobs.seen, array, timeout=60)
        spilled = array.nbytes > client._link.board.payload // 4
        assert seen["type"] == "ndarray" and seen["dtype"] == array.dtype.str and seen["shape"] == list(array.shape)
        # Spilled: a read-only view of the client's shared memory, no copy; inline: the worker's own.
        assert seen["in_shared_memory"] is spilled and seen["writeable"] is not spilled, seen
        if array.dtype.kind in "fiub":
            assert seen["sum"] == float(array.sum())


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_64_mb_float64_argument_is_read_in_place_and_comes_back_exact(served, order):
    coord, name = served
    rng = np.random.default_rng(7)
    array = np.asarray(rng.random((4096, 2048)), order=order)  # 64 MiB, 1,024 times a slot
    with shmpool.connect(name) as client:
        seen = client.submit(jobs.seen, array).result(120)
        assert seen["in_shared_memory"] and not seen["writeable"] and seen["f_order"] is (order == "F")
        assert seen["sum"] == float(array.sum())
        back = client.submit(jobs.same, array).result(120)  # and a 64 MiB result, spilled back
        assert back.dtype == np.float64 and back.shape == array.shape and np.array_equal(back, array)
        assert back.flags.f_contiguous is (order == "F")


def test_a_large_argument_and_a_large_result_in_one_job(served):
    coord, name = served
    array = np.arange(2 * MB, dtype=np.float64).reshape(1024, 2048)  # 16 MiB
    with shmpool.connect(name) as client:
        got = client.submit(jobs.scaled, array, 0.5).result(60)
        assert np.array_equal(got, array * 0.5) and got.dtype == np.float64
        got = client.call(jobs.scaled, array, 3, timeout=60)  # the direct path too
        assert np.array_equal(got, array * 3)


def test_keyword_and_nested_array_arguments_spill_too(served):
    coord, name = served
    left, right = np.ones(1 * MB, dtype=np.int64), np.full(MB // 2, 3, dtype=np.int64)
    with shmpool.connect(name) as client:
        assert client.submit(jobs.keywords, left=left, right=right).result(60) == float(MB - 3 * (MB // 2))
        nested = client.submit(jobs.same, {"a": [left, (right, "x")], "small": np.arange(3)}).result(60)
        assert np.array_equal(nested["a"][0], left) and np.array_equal(nested["a"][1][0], right)
        assert nested["a"][1][1] == "x" and np.array_equal(nested["small"], np.arange(3))


def test_many_medium_arrays_that_together_overflow_the_slot_spill_together(served):
    """Eight 10 KiB arrays are each below the 16 KiB threshold but 80 KiB together: the request is
    encoded again with every array spilled, into one allocation, instead of RequestTooLarge."""
    coord, name = served
    arrays = [np.full(1280, i, dtype=np.float64) for i in range(8)]
    with shmpool.connect(name) as client:
        back = client.submit(jobs.same, arrays).result(60)
        assert len(back) == 8 and all(np.array_equal(b, a) for a, b in zip(arrays, back))
        assert client.submit(jobs.seen_each, arrays).result(60) == [True] * 8
        assert client.submit(jobs.seen_each, arrays[:2]).result(60) == [False] * 2  # 20 KiB: inline
        assert [s["in_shared_memory"] for s in client.map(jobs.seen, arrays, timeout=60)] == [False] * 8
        with pytest.raises(RequestTooLarge):  # bytes never spill
            client.submit(jobs.same, [b"x" * 10_000] * 8)


def test_map_with_array_arguments_keeps_order_inline_chunked_and_spilled(served):
    coord, name = served
    arrays = [np.full(n, i, dtype=np.float32) for i, n in enumerate([3, 10_000, 500_000, 7, 40_000] * 4)]
    with shmpool.connect(name) as client:
        assert list(client.map(jobs.total, arrays, timeout=120)) == [float(a.sum()) for a in arrays]
        assert list(client.map(jobs.total, arrays, chunksize=3, timeout=120)) == [float(a.sum()) for a in arrays]
        back = list(client.map(jobs.same, arrays, timeout=120))
        assert all(b.dtype == a.dtype and np.array_equal(b, a) for a, b in zip(arrays, back))


def test_many_concurrent_large_argument_jobs_from_many_threads(served):
    coord, name = served
    with shmpool.connect(name) as client:
        def work(seed: int) -> list[bool]:
            rng = np.random.default_rng(seed)
            arrays = [rng.random(512 * 1024) for _ in range(6)]  # 4 MiB each
            futures = [client.submit(jobs.total, a) for a in arrays]
            return [f.result(120) == float(a.sum()) for a, f in zip(arrays, futures)]

        results: list[list[bool]] = []
        threads = [threading.Thread(target=lambda s=s: results.append(work(s))) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert len(results) == 6 and all(all(r) for r in results), results


def test_a_map_whose_arguments_exceed_the_memory_limit_waits_for_room_instead_of_failing(make_name):
    """40 arguments of 8 MiB are 320 MiB against a 128 MiB limit: the client places each one as
    earlier jobs free theirs (memory back-pressure), and the map completes."""
    name = make_name()
    with Coordinator(name, workers=2, job_modules=["_array_jobs"], memory_limit=128 * MB) as coord:
        baseline = _live(coord)
        arrays = [np.full(MB, i, dtype=np.float64) for i in range(40)]
        with shmpool.connect(name) as client:
            assert list(client.map(jobs.total, arrays, timeout=300)) == [float(i * MB) for i in range(40)]
        _assert_board_whole(coord, baseline)
    assert list_objects(name) == ([], [])


def test_an_argument_beyond_the_memory_limit_is_refused_naming_it_and_nothing_leaks(make_name):
    name = make_name()
    with Coordinator(name, workers=1, job_modules=["_array_jobs"], memory_limit=32 * MB) as coord:
        baseline = _live(coord)
        huge = np.zeros(8 * MB, dtype=np.float64)  # 64 MiB against 32 MiB
        with shmpool.connect(name) as client:
            for how in ("submit", "call", "kwargs", "map"):
                with pytest.raises(ArgumentTooLarge) as refused:
                    if how == "submit":
                        client.submit(jobs.same, huge)
                    elif how == "call":
                        client.call(jobs.total, huge, timeout=30)
                    elif how == "kwargs":
                        client.submit(jobs.keywords, left=np.ones(3), right=huge)
                    else:
                        list(client.map(jobs.total, [np.ones(3), huge], timeout=30))
                error = refused.value
                assert isinstance(error, RequestTooLarge) and isinstance(error, ShmPoolError)
                assert error.argument == ("kwargs['right']" if how == "kwargs" else "args[0]"), error
                assert error.nbytes == huge.nbytes and "_array_jobs" in error.job
                assert isinstance(error.__cause__, LimitExceeded), repr(error.__cause__)
                assert error.argument in str(error)
            assert client.submit(jobs.total, np.ones(MB)).result(30) == float(MB)  # the client works on
        _assert_board_whole(coord, baseline)
    assert list_objects(name) == ([], [])


def test_a_cancelled_futures_spilled_argument_is_freed(served, tmp_path):
    coord, name = served
    baseline = _live(coord)
    gate = tmp_path / "gate"
    with shmpool.connect(name) as client:
        blockers = [client.submit(jobs.wait_for_path, str(gate)) for _ in range(2)]  # both workers busy
        wait_for(lambda: coord.stats()["jobs"]["running"] == 2)
        queued = [client.submit(jobs.total, np.ones(MB)) for _ in range(3)]
        board = job_board(coord)
        assert _live(coord) == baseline + 3, (  # one allocation per spilled request
            coord.stats()["jobs"], [board.slot_row(s) for s in range(5)], [f.done() for f in queued])
        assert all(f.cancel() for f in queued)
        assert _live(coord) == baseline
        gate.touch()
        assert [f.result(30) for f in blockers] == [0.0, 0.0]


def test_a_call_that_times_out_frees_its_argument_when_the_late_answer_is_dropped(served):
    coord, name = served
    baseline = _live(coord)
    with shmpool.connect(name) as client:
        with pytest.raises(FuturesTimeout):
            client.call(jobs.sleep_then_total, 0.5, np.ones(MB), timeout=0.1)
        wait_for(lambda: coord.stats()["jobs"]["running"] == 0)
        assert client.call(jobs.total, np.ones(3), timeout=30) == 3.0  # reads the late answer, drops it
        wait_for(lambda: _live(coord) == baseline)


def test_a_client_closed_while_its_job_runs_leaves_the_argument_to_the_worker(served, tmp_path):
    coord, name = served
    baseline = _live(coord)
    gate, out = tmp_path / "gate", tmp_path / "out"
    array = np.arange(MB, dtype=np.float64)
    client = shmpool.connect(name)
    future = client.submit(jobs.wait_for_path, str(gate), array, str(out))
    wait_for(lambda: Path(f"{gate}.pid").exists())
    client.close()  # the job is orphaned; its argument is the coordinator's now, still mapped
    assert isinstance(future.exception(), shmpool.ClientClosed)
    assert _live(coord) == baseline + 1
    gate.touch()
    wait_for(lambda: out.exists())
    assert float(out.read_text()) == float(array.sum())  # read whole, after its client left
    wait_for(lambda: _live(coord) == baseline)


@pytest.mark.parametrize("fault", ["arguments.placed", "submit.popped", "submit.filled"])
def test_a_client_sigkilled_mid_submit_leaks_no_argument(own, tmp_path, fault):
    """Killed with its argument placed but not on the board, or inside the board's lock (the
    next locker repairs): the table reclaims the dead client's blocks, the board heals."""
    coord, name = own
    baseline = _live(coord)
    gate = tmp_path / "gate"
    gate.touch()  # should the request have been queued, its job ends at once
    child = submitting_client(name, gate, MB, fault)
    assert child.wait(60) == -signal.SIGKILL
    assert child.stdout is not None and child.stdout.read() == ""  # it died inside submit
    _assert_board_whole(coord, baseline)
    with shmpool.connect(name) as client:  # the board serves on
        assert client.submit(jobs.total, np.ones(MB)).result(30) == float(MB)


def test_a_client_sigkilled_after_submit_with_its_job_queued_leaks_no_argument(own, tmp_path):
    coord, name = own
    baseline = _live(coord)
    gate = tmp_path / "gate"
    with shmpool.connect(name) as client:
        blockers = [client.submit(jobs.wait_for_path, str(tmp_path / "busy")) for _ in range(2)]
        wait_for(lambda: coord.stats()["jobs"]["running"] == 2)
        child = submitting_client(name, gate, MB)
        assert child.stdout is not None and child.stdout.readline().strip() == "submitted"
        assert _live(coord) == baseline + 1
        child.kill()
        child.wait(30)
        wait_for(lambda: _live(coord) == baseline, what="the dead client's argument reclaimed")
        (tmp_path / "busy").touch()
        assert [f.result(30) for f in blockers] == [0.0, 0.0]
    assert not Path(f"{gate}.pid").exists()  # its job never ran


def test_a_client_sigkilled_while_its_job_runs_leaves_the_argument_to_the_job(own, tmp_path):
    """The job is orphaned and its argument adopted by the coordinator, so the dead-owner sweep
    (every second) does not free the blocks under the worker: the job reads them whole."""
    coord, name = own
    baseline = _live(coord)
    gate = tmp_path / "gate"
    n = MB
    child = submitting_client(name, gate, n)
    assert child.stdout is not None and child.stdout.readline().strip() == "submitted"
    wait_for(lambda: Path(f"{gate}.pid").exists(), what="the job running")
    child.kill()
    child.wait(30)
    wait_for(lambda: coord.stats()["jobs"]["clients"] == 0, what="the dead client swept")
    time.sleep(2.5)  # two dead-owner sweeps of the allocation table
    assert _live(coord) == baseline + 1  # adopted: still live for the running job
    gate.touch()
    out = Path(f"{gate}.out")
    wait_for(lambda: out.exists())
    assert float(out.read_text()) == float(np.arange(n, dtype=np.float64).sum())
    wait_for(lambda: _live(coord) == baseline, what="the worker freed the orphan's argument")


def test_a_worker_sigkilled_mid_job_leaves_the_argument_to_the_requeued_run(own, tmp_path):
    coord, name = own
    array = np.arange(MB, dtype=np.float64)
    with shmpool.connect(name) as client:
        assert client.submit(jobs.kill_worker_once, str(tmp_path / "killed"), array).result(60) == float(array.sum())
    assert coord.stats()["jobs"]["worker_deaths"] == 1 and coord.stats()["jobs"]["requeued"] == 1


def test_a_worker_sigkilled_running_an_orphaned_job_leaves_its_argument_to_the_coordinator(own, tmp_path):
    coord, name = own
    baseline = _live(coord)
    gate = tmp_path / "gate"
    client = shmpool.connect(name)
    client.submit(jobs.wait_for_path, str(gate), np.ones(MB))
    wait_for(lambda: Path(f"{gate}.pid").exists())
    client.close()  # orphaned: the worker would free the argument when it finishes...
    assert _live(coord) == baseline + 1
    os.kill(int(Path(f"{gate}.pid").read_text()), signal.SIGKILL)  # ...but it dies first
    wait_for(lambda: _live(coord) == baseline, what="the coordinator freed the argument")
    wait_for(lambda: len(coord.stats()["workers"]["pids"]) == 2)


def test_the_job_receives_a_read_only_view_of_a_spilled_argument_and_its_own_copy_of_a_small_one(served):
    coord, name = served
    with shmpool.connect(name) as client:
        with pytest.raises(ValueError, match="read-only"):
            client.submit(jobs.write_into, np.ones(MB)).result(30)
        assert client.submit(jobs.write_into, np.ones(3)).result(30) == 7.0
