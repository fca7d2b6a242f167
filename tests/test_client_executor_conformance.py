"""The same Executor scenarios against ProcessPoolExecutor and shmpool's Client, expecting the
same outcomes. CPython's test_concurrent_futures is the model: submit (with keywords), map (with
chunksize, with a timeout, with an exception), exceptions, shutdown(cancel_futures=True), wait,
as_completed, cancel, running, the context manager. Workers are real processes on both sides."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import secrets
import threading
import time

import pytest

import _executor_jobs as jobs
import shmpool
from conftest import TEST_PREFIX
from shmpool.coordinator import Coordinator
from shmpool.substrate.names import list_objects

WORKERS = 2


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    with Coordinator(name, data_dir=tmp_path_factory.mktemp("empty"), workers=WORKERS,
                     job_modules=["_executor_jobs"]) as coord:
        yield coord
    assert list_objects(name) == ([], [])


@pytest.fixture(params=["ProcessPoolExecutor", "shmpool.Client"])
def make_executor(request, coordinator):
    made: list[cf.Executor] = []

    def make() -> cf.Executor:
        if request.param == "ProcessPoolExecutor":
            # forkserver: a fork of this process would copy the coordinator's threads and mappings.
            executor = cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("forkserver"))
        else:
            executor = shmpool.connect(coordinator.name)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def executor(make_executor):
    return make_executor()


def _until(predicate, seconds=30.0):  # a hang catcher: polls return as soon as it holds
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_is_an_executor(executor):
    assert isinstance(executor, cf.Executor)


def test_submit_with_positional_and_keyword_arguments(executor):
    assert executor.submit(pow, 2, 8).result(10) == 256
    assert executor.submit(len, [1, 2]).result(10) == 2
    assert executor.submit(jobs.mul, 2, y=8).result(10) == 16
    assert executor.submit(divmod, 7, 2).result(10) == (3, 1)  # a tuple stays a tuple
    assert executor.submit(sorted, {3: "c", 1: "a"}).result(10) == [1, 3]


def test_map_keeps_order_at_every_chunksize(executor):
    for chunksize in (1, 3, 20):
        assert list(executor.map(pow, range(10), [2] * 10, chunksize=chunksize)) == [i * i for i in range(10)]
    assert list(executor.map(jobs.mul, [1, 2, 3], [4, 5])) == [4, 10]  # zip: the shortest wins
    assert list(executor.map(jobs.mul, [], [])) == []
    with pytest.raises(ValueError):
        executor.map(pow, [1], [1], chunksize=0)


def test_map_raises_the_exception_at_the_item_that_failed(executor):
    results = executor.map(divmod, [1, 1], [2, 0])
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout_bounds_the_whole_iteration(executor, tmp_path):
    # Both workers up (ProcessPoolExecutor starts them on demand): start-up is not what is timed.
    list(executor.map(jobs.sleep_then, [0.1, 0.1]))
    got = []
    (tmp_path / "now").touch()
    never = tmp_path / "never"  # the second job cannot end while the map waits for it
    try:
        with pytest.raises(TimeoutError):
            for value in executor.map(jobs.wait_for_path, [str(tmp_path / "now"), str(never)], ["quick", "slow"],
                                      timeout=1.0):
                got.append(value)
        assert got == ["quick"]
    finally:
        never.touch()


def test_a_job_exception_keeps_its_type_and_carries_the_remote_traceback(executor):
    with pytest.raises(ValueError, match="bad input") as err:
        executor.submit(jobs.fail_with, "ValueError", "bad input").result(10)
    assert "Traceback" in str(err.value.__cause__) and "fail_with" in str(err.value.__cause__)
    future = executor.submit(jobs.fail_with, "KeyError", "k")
    assert isinstance(future.exception(10), KeyError) and future.exception().args == ("k",)


def test_shutdown_with_cancel_futures_cancels_the_queued_and_finishes_the_running(executor, tmp_path):
    release = tmp_path / "release"
    blockers = [executor.submit(jobs.wait_for_path, str(release), "ran") for _ in range(WORKERS)]
    rest: list[cf.Future] = []
    try:
        _until(lambda: all(f.running() for f in blockers))  # taken: cancel_futures must leave them be
        rest += [executor.submit(jobs.sleep_then, 0.05, i) for i in range(20)]
    except BaseException:
        release.touch()
        raise
    # The blockers end once shutdown has cancelled the queue (it waits for them meanwhile).
    releaser = threading.Thread(target=lambda: (_until(rest[-1].cancelled), release.touch()), daemon=True)
    releaser.start()
    try:
        executor.shutdown(wait=True, cancel_futures=True)
    finally:
        release.touch()
        releaser.join(30)
    assert [f.result(0) for f in blockers] == ["ran"] * WORKERS
    assert all(f.done() for f in rest)
    cancelled = [f for f in rest if f.cancelled()]
    assert len(cancelled) > 10
    assert all(f.result(0) in range(20) for f in rest if not f.cancelled())
    with pytest.raises(RuntimeError):
        executor.submit(pow, 2, 2)


def test_submit_after_shutdown_raises_runtime_error(executor):
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        executor.submit(pow, 2, 2)
    executor.shutdown()  # idempotent


# Jobs that must still run at some point wait for a file the test creates (jobs.wait_for_path),
# so the order of events is the test's doing, not a race against sleeps on a loaded machine.


def test_as_completed_yields_in_completion_order_and_times_out(executor, tmp_path):
    list(executor.map(pow, [1, 1], [1, 1]))  # both workers up before the race below
    release = tmp_path / "release"
    futures = [executor.submit(jobs.wait_for_path, str(release), "held"), executor.submit(jobs.sleep_then, 0, "free")]
    order = []
    try:
        for f in cf.as_completed(futures, timeout=60):
            order.append(f.result())
            release.touch()  # the held job may finish only after the free one was yielded
    finally:
        release.touch()
    assert order == ["free", "held"]
    never = tmp_path / "never"
    slow = executor.submit(jobs.wait_for_path, str(never), "late")
    try:
        with pytest.raises(TimeoutError):
            list(cf.as_completed([slow], timeout=0.1))
    finally:
        never.touch()
    assert slow.result(30) == "late"


def test_wait_returns_at_first_completed_first_exception_and_all_completed(executor, tmp_path):
    list(executor.map(pow, [1, 1], [1, 1]))
    release = tmp_path / "release"
    slow = executor.submit(jobs.wait_for_path, str(release), "slow")
    try:
        fast = executor.submit(jobs.sleep_then, 0, "fast")
        done, not_done = cf.wait([slow, fast], timeout=60, return_when=cf.FIRST_COMPLETED)
        assert done == {fast} and not_done == {slow}
        bad = executor.submit(jobs.fail_with, "RuntimeError", "x")
        done, not_done = cf.wait([slow, bad], timeout=60, return_when=cf.FIRST_EXCEPTION)
        assert bad in done and slow in not_done
    finally:
        release.touch()
    done, not_done = cf.wait([slow, fast, bad], timeout=60, return_when=cf.ALL_COMPLETED)
    assert not not_done and slow.result() == "slow"


def test_cancel_withdraws_a_queued_job_but_not_a_running_one(executor, tmp_path):
    release = tmp_path / "release"
    running = [executor.submit(jobs.wait_for_path, str(release), i) for i in range(WORKERS)]
    try:
        _until(lambda: all(f.running() for f in running))
        queued = [executor.submit(jobs.sleep_then, 0, i) for i in range(6)]
        assert queued[-1].cancel() and queued[-1].cancelled()
        assert not running[0].cancel() and not running[0].cancelled()
    finally:
        release.touch()
    with pytest.raises(cf.CancelledError):
        queued[-1].result()
    assert [f.result(30) for f in running] == list(range(WORKERS))
    assert [f.result(30) for f in queued[:-1]] == list(range(5))


def test_running_is_true_while_a_worker_runs_the_job(executor, tmp_path):
    release = tmp_path / "release"
    future = executor.submit(jobs.wait_for_path, str(release), "r")
    try:
        _until(future.running)
    finally:
        release.touch()
    assert future.result(30) == "r" and not future.running()


def test_the_context_manager_waits_for_running_jobs(make_executor, tmp_path):
    release = tmp_path / "release"
    with make_executor() as executor:
        future = executor.submit(jobs.wait_for_path, str(release), "done")
        try:
            _until(future.running)
        finally:
            # Released 0.2 s from now, so the exit normally finds the job still running and must
            # wait for it (on a stalled machine it may find it done: then this proves less, but
            # never fails a correct executor).
            threading.Timer(0.2, release.touch).start()
    assert future.done() and future.result(0) == "done"
