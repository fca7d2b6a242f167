"""What shmpool's Executor adds or must say clearly, across real processes: callables refused
with reasons, job timeouts (worker killed and replaced), the worker initializer, the
coordinator's sys.path in the workers, asyncio without threads, bounded streaming, submission
timeouts that leave nothing queued."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import math
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import _executor_jobs as jobs
import shmpool
from conftest import TEST_PREFIX
from shmpool.coordinator import Coordinator
from shmpool import (ClientClosed, InvalidArgument, InvalidJob, JobError, JobTimeout, UnknownJob, WorkerInitFailed)
from shmpool.substrate.names import list_objects

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def coordinator():
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    with Coordinator(name, data_dir=shmpool.SAMPLE, workers=2, job_modules=["_executor_jobs"]) as coord:
        yield coord
    assert list_objects(name) == ([], [])


@pytest.fixture(scope="module")
def two_slots(tmp_path_factory):
    """One worker and two job slots, for the tests of waiting for a slot (each started its own):
    every slot is free again after each of them, which they wait for themselves."""
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    with Coordinator(name, data_dir=tmp_path_factory.mktemp("no-data"), workers=1, job_slots=2,
                     job_modules=["_executor_jobs"]) as coord:
        yield coord
    assert list_objects(name) == ([], [])


@pytest.fixture
def client(coordinator):
    with shmpool.connect(coordinator.name) as client:
        yield client


def _until(predicate, seconds=30.0):  # a hang catcher: polls return as soon as it holds
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --------------------------------------------------------------------- callables


def test_callables_a_worker_cannot_import_are_refused_at_submit_saying_why(client):
    def nested(x):
        return x

    def from_main(x):
        return x
    from_main.__module__, from_main.__qualname__ = "__main__", "from_main"

    cases = [(lambda x: x, "a lambda"), (nested, "nested in another"), (from_main, "__main__"),
             (cf.Future.result, "a method"), (42, "not a function")]
    for fn, why in cases:
        with pytest.raises(InvalidJob, match="cannot be sent to a worker") as err:
            client.submit(fn, 1)
        assert why in err.value.reason and ("module" in err.value.reason)
    with pytest.raises(InvalidJob, match="__main__"):
        list(client.map(from_main, [1]))
    with pytest.raises(InvalidJob, match="lambda"):
        client.call(lambda: 1)


def test_callables_outside_the_allow_list_are_refused_by_the_worker(client):
    for fn in (os.getcwd, eval, open, getattr):
        with pytest.raises(UnknownJob, match="allow-list") as err:
            client.submit(fn, ".").result(10)
        # Named by the module users import it from: os.getcwd is "os:getcwd", not "posix:getcwd".
        assert err.value.job == ("os:getcwd" if fn is os.getcwd else f"{fn.__module__}:{fn.__qualname__}")
    assert client.submit(math.hypot, 3, 4).result(10) == 5.0  # math and the pure builtins are allowed
    assert client.submit(max, [3, 9, 4]).result(10) == 9


def test_names_keep_the_reader_first_convention_and_callables_reach_the_reader_by_asking(client):
    assert list(client.map("_executor_jobs:with_reader", range(5), chunksize=2)) == [["Reader", i] for i in range(5)]
    size = len(client.reader.load_layer_context(2, 3).content)
    assert client.submit(jobs.layer_length, 2, 3).result(10) == size
    with pytest.raises(shmpool.ShmPoolError, match="not one"):
        shmpool.worker_reader()  # this process is no worker


def test_exceptions_rebuild_only_types_the_client_knows_and_args_fit(client):
    with pytest.raises(jobs.CustomError, match="mine"):
        client.submit(jobs.raise_custom, "mine").result(10)
    with pytest.raises(JobError) as err:  # FussyError(a, b) cannot be rebuilt from its args ("a",)
        client.submit(jobs.raise_fussy).result(10)
    assert err.value.error_type == "FussyError" and "Traceback" in err.value.remote_traceback
    assert isinstance(err.value.__cause__, shmpool.RemoteTraceback)


def test_bad_arguments_are_typed_errors(client):
    for bad in (0, -1, "1", float("nan"), True):
        with pytest.raises(InvalidArgument) as err:
            client.submit(pow, 2, 2, job_timeout=bad)
        assert err.value.argument == "job_timeout"
    with pytest.raises(InvalidArgument):
        client.imap_unordered(abs, [1], buffer=0)


# --------------------------------------------------------------------- job timeouts


def test_a_job_past_its_job_timeout_fails_and_its_worker_is_killed_and_replaced(coordinator, client):
    before = set(coordinator.stats()["workers"]["pids"])
    t0 = time.monotonic()
    future = client.submit(jobs.hang, job_timeout=0.3)
    with pytest.raises(JobTimeout) as err:
        future.result(10)
    assert 0.3 <= time.monotonic() - t0 < 30  # not before its job_timeout (the upper bound catches a hang)
    assert err.value.timeout == 0.3 and err.value.worker_pid in before and err.value.job == "_executor_jobs:hang"
    _until(lambda: any(d["pid"] == err.value.worker_pid for d in coordinator.stats()["workers"]["deaths"]))
    death = next(d for d in coordinator.stats()["workers"]["deaths"] if d["pid"] == err.value.worker_pid)
    assert death["returncode"] == -signal.SIGKILL and "job_timeout" in death["meaning"] and death["requeued"] == 0
    _until(lambda: (err.value.worker_pid not in coordinator.stats()["workers"]["pids"]
                    and len(coordinator.stats()["workers"]["pids"]) == 2))  # replaced
    assert client.submit(pow, 2, 5, job_timeout=5).result(10) == 32  # deadline kept, not hit
    assert client.call(jobs.sleep_then, 0, "direct", job_timeout=5, timeout=10) == "direct"
    _until(lambda: coordinator.stats()["jobs"]["free"] == coordinator.stats()["jobs"]["slots"])


def test_the_coordinator_default_job_timeout_applies_unless_a_job_lifts_it(instance_name, tmp_path):
    with Coordinator(instance_name, data_dir=tmp_path, workers=1, job_modules=["_executor_jobs"],
                     job_timeout=0.3) as coord:
        with shmpool.connect(instance_name) as client:
            with pytest.raises(JobTimeout) as err:
                client.call(jobs.hang, timeout=10)
            assert err.value.timeout == 0.3
            assert client.submit(jobs.sleep_then, 0.6, "lifted", job_timeout=math.inf).result(10) == "lifted"
            assert coord.stats()["jobs"]["requeued"] == 0
    with pytest.raises(InvalidArgument):
        Coordinator(instance_name, workers=0, job_timeout=-1)


# --------------------------------------------------------------------- the initializer


def test_the_worker_initializer_runs_once_in_each_worker_before_it_serves(instance_name, tmp_path):
    with Coordinator(instance_name, data_dir=tmp_path, workers=2, job_modules=["_executor_jobs"],
                     worker_init=jobs.init, worker_init_args=("hello", str(tmp_path))) as coord:
        pids = coord.stats()["workers"]["pids"]
        for pid in pids:  # done before start() returned: start waits for the workers to serve
            assert (tmp_path / f"init-{pid}").read_text() == "hello\n"
        with shmpool.connect(instance_name) as client:
            seen = {tuple(entry) for _ in range(6) for entry in client.submit(jobs.initialized).result(10)}
        assert seen <= {("hello", pid) for pid in pids} and seen
    with Coordinator(instance_name, data_dir=tmp_path, workers=1, job_modules=["_executor_jobs"],
                     worker_init="_executor_jobs:init", worker_init_args=["by name"]) as coord:
        with shmpool.connect(instance_name) as client:
            assert client.call(jobs.initialized) == [["by name", coord.stats()["workers"]["pids"][0]]]


def test_a_failing_initializer_fails_start_with_its_error(instance_name, tmp_path):
    coord = Coordinator(instance_name, data_dir=tmp_path, workers=2, worker_init=jobs.init_fails,
                        worker_init_args=("no database at db.example",))
    t0 = time.monotonic()
    with pytest.raises(WorkerInitFailed) as err:
        coord.start()
    assert time.monotonic() - t0 < 30
    assert "RuntimeError: no database at db.example" in err.value.error
    assert err.value.initializer == "_executor_jobs:init_fails" and "no database" in str(err.value)
    assert not coord.running and list_objects(instance_name) == ([], [])


def test_bad_initializers_are_refused_at_construction(instance_name):
    with pytest.raises(InvalidJob, match="lambda"):
        Coordinator(instance_name, workers=0, worker_init=lambda: None)
    with pytest.raises(InvalidJob):
        Coordinator(instance_name, workers=0, worker_init="not a path")
    with pytest.raises(InvalidArgument, match="JSON"):
        Coordinator(instance_name, workers=0, worker_init=jobs.init, worker_init_args=(object(),))


def test_an_initializer_failing_in_a_replacement_backs_off_instead_of_looping(instance_name, tmp_path):
    ok = tmp_path / "db-is-up"
    ok.write_text("")
    with Coordinator(instance_name, data_dir=tmp_path, workers=2, job_modules=["_executor_jobs"],
                     worker_init=jobs.init_fails, worker_init_args=("db down", str(ok))) as coord:
        victim = coord.stats()["workers"]["pids"][0]
        ok.unlink()
        os.kill(victim, signal.SIGKILL)

        def init_failures() -> list[dict]:
            return [d for d in coord.stats()["workers"]["deaths"] if "initializer" in d["meaning"]]

        # The first replacement's failure, however long a loaded machine takes to start it (a
        # hang catcher); then 2.5 s of backoff: pauses of 0.5, 1, 2 s allow at most 3 more
        # failures, where a restart every 20 ms supervision round would give dozens.
        _until(lambda: init_failures(), seconds=120)
        time.sleep(2.5)
        failed = init_failures()
        assert 1 <= len(failed) <= 4, failed
        assert "db down" in failed[0]["meaning"] and failed[0]["restart_in"] > 0
        with shmpool.connect(instance_name) as client:
            assert client.submit(pow, 3, 2).result(10) == 9  # the other worker serves meanwhile
        ok.write_text("")
        _until(lambda: len(coord.stats()["workers"]["pids"]) == 2, seconds=15)


# --------------------------------------------------------------------- sys.path and __main__


def test_a_job_module_next_to_the_script_works_from_any_working_directory(instance_name, tmp_path):
    app, elsewhere = tmp_path / "app", tmp_path / "elsewhere"
    app.mkdir()
    elsewhere.mkdir()
    (app / "appjobs.py").write_text("def triple(x):\n    return 3 * x\n")
    (app / "main.py").write_text(textwrap.dedent(f"""
        import shmpool
        from shmpool.coordinator import Coordinator
        import appjobs


        def helper(reader, x):   # named by a string, so the reader comes first
            return [type(reader).__name__, x]


        if __name__ == "__main__":   # a worker importing this file (job "main:helper") runs none of this
            with Coordinator({instance_name!r}, workers=1, job_modules=["appjobs", "main"]):
                with shmpool.connect({instance_name!r}) as client:
                    print(client.submit(appjobs.triple, 3).result(30), client.submit("main:helper", 2).result(30))
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the script's folder helps
    proc = subprocess.run([sys.executable, str(app / "main.py")], cwd=elsewhere, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "9 ['Reader', 2]", proc.stdout


# --------------------------------------------------------------------- asyncio


def test_acall_and_asubmit_run_on_the_loop_without_a_thread_per_call(client):
    async def main():
        threads = threading.active_count()
        first = await client.acall(pow, 3, 3, timeout=10)
        results = await asyncio.gather(*[client.asubmit(jobs.mul, i, 2) for i in range(200)])
        return first, results, threading.active_count() - threads

    first, results, extra_threads = asyncio.run(main())
    assert first == 27 and results == [2 * i for i in range(200)] and extra_threads == 0


def test_acall_raises_the_job_exception_and_times_out(client):
    async def main():
        with pytest.raises(ValueError, match="async bad"):
            await client.acall(jobs.fail_with, "ValueError", "async bad")
        with pytest.raises(TimeoutError):
            await client.acall(jobs.sleep_then, 0.5, "late", timeout=0.1)

    asyncio.run(main())


def test_asubmit_waits_for_a_slot_without_blocking_the_loop(two_slots):
    coord = two_slots
    with shmpool.connect(coord.name) as client:
        async def main():
            ticks = 0
            busy = [client.asubmit(jobs.sleep_then, 0.3, i) for i in range(2)]  # both slots
            late = client.asubmit(jobs.sleep_then, 0, "late")                  # no slot: retried
            queued = client.asubmit(jobs.sleep_then, 0, "never")
            queued.cancel()

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            tick = asyncio.ensure_future(ticker())
            got = await asyncio.gather(*busy, late)
            tick.cancel()
            return got, ticks, queued.cancelled()

        got, ticks, cancelled = asyncio.run(main())
        assert got == [0, 1, "late"] and cancelled
        assert ticks >= 20  # ~0.6 s of waiting for slots, the loop ticking all along
        _until(lambda: coord.stats()["jobs"]["free"] == 2)


# --------------------------------------------------------------------- streaming, map, shutdown


def test_imap_unordered_streams_with_a_bounded_number_in_flight(client):
    pulled = []

    def items():
        for i in range(40):
            pulled.append(i)
            yield i

    results = []
    for value in client.imap_unordered(jobs.slow_square, items(), buffer=4):
        assert len(pulled) - len(results) <= 4
        results.append(value)
    assert sorted(results) == [i * i for i in range(40)]
    stream = client.imap_unordered(jobs.fail_with, ["KeyError"], buffer=2)
    with pytest.raises(TypeError):  # fail_with takes two arguments; an item is one
        next(stream)


def test_map_that_cannot_submit_in_time_cancels_what_it_queued(two_slots):
    coord = two_slots
    before = coord.stats()["jobs"]
    with shmpool.connect(coord.name) as client:
        with pytest.raises(TimeoutError, match="could not submit|no free job slot"):
            client.map(jobs.sleep_then, [0.5] * 5, timeout=0.3)
        _until(lambda: coord.stats()["jobs"]["free"] == 2)
        jobs_ = coord.stats()["jobs"]
        # One ran, the queued one went.
        assert jobs_["cancelled"] - before["cancelled"] == 1 and jobs_["completed"] - before["completed"] == 1


def test_shutdown_without_wait_returns_at_once_and_detaches_when_jobs_are_done(coordinator, tmp_path):
    client = shmpool.connect(coordinator.name)
    clients = coordinator.stats()["jobs"]["clients"]
    release = tmp_path / "release"
    future = client.submit(jobs.wait_for_path, str(release), "finished")
    try:
        client.shutdown(wait=False)
        assert not future.done(), "shutdown(wait=False) waited for the job"  # it cannot end before `release`
        with pytest.raises(ClientClosed):
            client.submit(pow, 1, 1)
    finally:
        release.touch()
    assert future.result(30) == "finished"
    _until(lambda: coordinator.stats()["jobs"]["clients"] == clients - 1)
