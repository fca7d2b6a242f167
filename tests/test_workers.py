"""The worker pool across real processes: jobs, crashes, back-pressure, shutdown."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

import pytest
from _waiting import wait_for

import _client_children as children
import shmpool
from shmpool.coordinator import Coordinator
from shmpool import AttachError, LayerNotFound, RequestTooLarge, WorkerCrashed
from conftest import TEST_PREFIX, TESTS
from shmpool.substrate.names import list_objects



pytestmark = pytest.mark.usefixtures("user_jobs_importable")


@pytest.fixture(scope="module")
def pool(sample_dir):
    """One coordinator (2 workers, the sample) for the tests that only run jobs: each of them
    used to start its own, two worker interpreters and a sample load apiece. Assertions on its
    counters are relative. Tests that kill workers and count deaths use ``own_pool``."""
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"  # module-scoped, so not from the make_name fixture
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        with Coordinator(name, data_dir=sample_dir, workers=2, job_modules=["_jobs"]) as coord:
            with shmpool.connect(name) as client:
                yield coord, client
    assert list_objects(name) == ([], [])


@pytest.fixture(scope="module")
def _one_worker_shared(sample_dir):
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"  # module-scoped, so not from the make_name fixture
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        with Coordinator(name, data_dir=sample_dir, workers=1, job_modules=["_jobs"]) as coord:
            yield coord
    assert list_objects(name) == ([], [])


@pytest.fixture
def one_worker(_one_worker_shared):
    """One coordinator with 1 worker for the tests that need exactly one and kill nothing (each
    used to start its own); no client of its own, so a test's channel counts are its own. After
    each test: every slot free, no channel, no allocation beyond what it had before the test.
    Its counters are cumulative: assertions on them are relative."""
    coord = _one_worker_shared
    baseline = coord.stats()["live_allocations"]
    yield coord
    wait_for(lambda: coord.stats()["jobs"]["free"] == coord.stats()["jobs"]["slots"], 30, "every slot free")
    wait_for(lambda: coord.stats()["jobs"]["clients"] == 0, 30, "every channel released")
    wait_for(lambda: coord.stats()["live_allocations"] == baseline, 30, "allocations back to the baseline")


@pytest.fixture
def own_pool(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=2, job_modules=["_jobs"]) as coord:
        with shmpool.connect(instance_name) as client:
            yield coord, client


def test_128_client_threads_get_correct_bytes(pool):
    coord, client = pool
    before = coord.stats()["jobs"]
    keys = [(d, l) for d in range(1, 15) for l in range(1, 201)]

    def work(seed):
        rng = random.Random(seed)
        wrong = 0
        for dim, layer in rng.sample(keys, 15):
            ctx = client.lookup(dim, layer, timeout=30)
            wrong += (ctx.dimension_id, ctx.layer_id) != (dim, layer) or not ctx.verify()
        return wrong

    with ThreadPoolExecutor(128) as ex:
        wrong = sum(ex.map(work, range(128)))
    assert wrong == 0
    jobs = coord.stats()["jobs"]
    assert jobs["completed"] - before["completed"] >= 128 * 15 and jobs["failed"] == before["failed"]


def test_builtin_jobs(pool):
    _, client = pool
    ctx = client.lookup(2, 3)
    assert isinstance(ctx.content, memoryview) and ctx.content.readonly and ctx.verify()
    got = client.load_contexts([(1, 1), (2, 2)])
    assert [(c.dimension_id, c.layer_id) for c in got] == [(1, 1), (2, 2)]
    lenient = client.load_contexts([(1, 1), (1, 999)], strict=False)
    assert len(lenient) == 1 and lenient.missing[0].layer_id == 999
    text = client.submit("format_for_llm", [[3, 4], [5, 6]]).result(10)
    assert text == client.reader.load_contexts([(3, 4), (5, 6)]).format_for_llm()
    scanned = client.submit("scan", 4).result(10)
    assert len(scanned) == 200 and all(c.dimension_id == 4 for c in scanned)


def test_user_jobs_by_dotted_path_and_typed_errors(pool):
    _, client = pool
    out = client.submit("_jobs:echo", 1, "two", [3], key={"a": 1}).result(10)
    assert out["args"] == [1, "two", [3]] and out["kwargs"] == {"key": {"a": 1}}
    assert out["pid"] in pool[0].stats()["workers"]["pids"]
    with pytest.raises(ValueError, match="bad input") as err:  # the job's own type, as with any Executor
        client.submit("_jobs:boom", "bad input").result(10)
    assert isinstance(err.value.__cause__, shmpool.RemoteTraceback)
    assert "Traceback" in err.value.__cause__.traceback and "in boom" in err.value.__cause__.traceback
    with pytest.raises(LayerNotFound) as err:
        client.lookup(1, 123456)
    assert err.value.layer_id == 123456 and err.value.dimension_id == 1
    with pytest.raises(shmpool.ShmPoolError, match="unknown job"):
        client.submit("nope:nothing").result(10)
    with pytest.raises(TypeError, match="cannot send"):
        client.submit("_jobs:echo", object())


def test_contexts_returned_by_a_user_job_resolve_without_copy(pool):
    _, client = pool
    contexts = client.submit("_jobs:first_layers", 6, 5).result(10)
    assert [c.layer_id for c in contexts] == client.reader.layer_ids(6)[:5]
    assert all(c.verify() and c.content.readonly for c in contexts)


def test_large_results_spill_into_the_pools_and_are_freed(pool):
    coord, client = pool
    before = coord.stats()["live_allocations"]
    data = client.submit("_jobs:big", 300_000).result(10)
    assert data == bytes(range(256)) * (300_000 // 256)
    assert coord.stats()["live_allocations"] == before
    with pytest.raises(RequestTooLarge):
        client.submit("_jobs:echo", b"x" * 100_000)


def test_map_keeps_order(pool):
    _, client = pool
    assert list(client.map("_jobs:slow", [0.02, 0.0, 0.01], ["a", "b", "c"])) == ["a", "b", "c"]


def test_sigkill_of_a_worker_mid_job_loses_no_job(own_pool, tmp_path):
    coord, client = own_pool
    marker = tmp_path / "killed"
    victim_job = client.submit("_jobs:kill_worker_once", str(marker), "survivor")
    others = [client.submit("_jobs:slow", 0.05, i) for i in range(10)]
    assert victim_job.result(30) == "survivor"
    assert [f.result(30) for f in others] == list(range(10))
    stats = coord.stats()
    assert stats["jobs"]["worker_deaths"] == 1 and stats["jobs"]["requeued"] == 1
    death = stats["workers"]["deaths"][0]
    assert death["returncode"] == -signal.SIGKILL and "SIGKILL" in death["meaning"]
    assert int(marker.read_text()) == death["pid"]
    wait_for(lambda: len(coord.stats()["workers"]["pids"]) == 2)
    assert client.lookup(1, 1).verify()


def test_external_sigkill_of_a_busy_worker_requeues_its_job(own_pool):
    coord, client = own_pool
    futures = [client.submit("_jobs:slow", 0.4, i) for i in range(2)]
    time.sleep(0.15)
    os.kill(coord.stats()["workers"]["pids"][0], signal.SIGKILL)
    assert sorted(f.result(30) for f in futures) == [0, 1]
    assert coord.stats()["jobs"]["requeued"] >= 1


def test_a_job_that_kills_its_worker_twice_fails_clearly(own_pool):
    coord, client = own_pool
    with pytest.raises(WorkerCrashed) as err:
        client.submit("_jobs:kill_worker").result(30)
    assert err.value.job == "_jobs:kill_worker" and err.value.attempts == 2
    assert "SIGKILL" in str(err.value)
    assert client.lookup(3, 3).verify()


def test_back_pressure_waits_then_times_out(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=1, job_modules=["_jobs"], job_slots=2):
        with shmpool.connect(instance_name) as client:
            busy = [client.submit("_jobs:slow", 0.5, i) for i in range(2)]
            t0 = time.monotonic()
            with pytest.raises(FuturesTimeout, match="no free job slot"):
                client.submit("_jobs:slow", 0, "late", timeout=0.1)
            assert 0.09 <= time.monotonic() - t0 < 30  # it waited its timeout; the upper bound catches a hang
            waited = client.submit("_jobs:slow", 0, "patient", timeout=30)
            assert waited.result(30) == "patient"
            assert [f.result(30) for f in busy] == [0, 1]


def test_cancel_follows_concurrent_futures(one_worker):
    coord = one_worker
    cancelled = coord.stats()["jobs"]["cancelled"]
    with shmpool.connect(coord.name) as client:
        running = client.submit("_jobs:slow", 0.5, "r")
        wait_for(lambda: coord.stats()["jobs"]["running"] == 1)
        queued = client.submit("_jobs:slow", 0, "q")
        assert queued.cancel() and queued.cancelled()
        assert not running.cancel()
        assert running.result(30) == "r"
        with pytest.raises(FuturesTimeout):
            client.submit("_jobs:slow", 0.5, "t").result(timeout=0.05)
        wait_for(lambda: coord.stats()["jobs"]["free"] == 256)
        assert coord.stats()["jobs"]["cancelled"] == cancelled + 1


def test_stop_drains_running_jobs_and_refuses_new_ones(instance_name, sample_dir):
    coord = Coordinator(instance_name, data_dir=sample_dir, workers=1, job_modules=["_jobs"],
                        drain_timeout=0.3).start()
    client = shmpool.connect(instance_name)
    try:
        quick = client.submit("_jobs:slow", 0.1, "done")
        stuck = [client.submit("_jobs:slow", 1.0, i) for i in range(3)]
        time.sleep(0.05)
        coord.stop()
        assert quick.result(30) == "done"
        outcomes = []
        for f in stuck:
            try:
                outcomes.append(f.result(30))
            except AttachError as exc:
                outcomes.append(type(exc).__name__)
        assert "AttachError" in outcomes
        with pytest.raises(AttachError):
            client.submit("_jobs:slow", 0, "after")
    finally:
        client.close()
        coord.stop()
    assert list_objects(instance_name) == ([], [])


def test_client_gets_an_error_not_a_hang_when_the_coordinator_is_killed(instance_name, sample_dir):
    ctx = mp.get_context("spawn")
    ready, stop, submitted = ctx.Event(), ctx.Event(), ctx.Event()
    results = ctx.Queue()
    coord = ctx.Process(target=children.coordinator_process, args=(instance_name, str(sample_dir), ready, stop))
    coord.start()
    try:
        assert ready.wait(60)
        client = ctx.Process(target=children.client_process, args=(instance_name, submitted, results))
        client.start()
        assert submitted.wait(60)
        time.sleep(0.2)
        os.kill(coord.pid, signal.SIGKILL)
        coord.join(10)
        outcomes, _waited = results.get(timeout=30)
        client.join(10)
        # A hang would show as TimeoutError here (each result() waits 30 s at most): no clock needed.
        assert [kind for kind, _ in outcomes] == ["AttachError"] * 3
    finally:
        if coord.is_alive():
            coord.kill()
        time.sleep(0.5)  # orphaned workers notice the dead coordinator and exit
        shmpool.cleanup(instance_name)
    assert list_objects(instance_name) == ([], [])


def test_connect_without_workers_is_a_clear_error(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=0):
        with pytest.raises(AttachError, match="runs no workers"):
            shmpool.connect(instance_name)


def test_closing_a_client_with_jobs_in_flight_leaks_no_slot_or_block(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=2, job_modules=["_jobs"]) as coord:
        baseline = coord.stats()["live_allocations"]
        client = shmpool.connect(instance_name)
        running = [client.submit("_jobs:slow", 0.3, i) for i in range(2)]
        queued = [client.submit("_jobs:big", 300_000) for _ in range(3)]  # spilled results
        wait_for(lambda: coord.stats()["jobs"]["running"] == 2)
        client.close()  # detach now: unlike shutdown() (and the with block), close() does not wait
        for fut in running + queued:
            assert fut.done()
            assert fut.cancelled() or isinstance(fut.exception(), shmpool.ClientClosed)
        wait_for(lambda: coord.stats()["jobs"]["free"] == coord.stats()["jobs"]["slots"])
        wait_for(lambda: coord.stats()["live_allocations"] == baseline)
        assert coord.stats()["jobs"]["clients"] == 0


def test_a_spilled_result_whose_client_closed_before_delivery_is_freed(one_worker):
    coord = one_worker
    baseline = coord.stats()["live_allocations"]
    completed = coord.stats()["jobs"]["completed"]
    client = shmpool.connect(coord.name)
    fut = client.submit("_jobs:slow_big", 0.3, 300_000)  # finishes once we are gone
    wait_for(lambda: coord.stats()["jobs"]["running"] == 1)
    client.close()
    assert isinstance(fut.exception(), AttachError)
    wait_for(lambda: coord.stats()["jobs"]["completed"] >= completed + 1)
    wait_for(lambda: coord.stats()["jobs"]["free"] == coord.stats()["jobs"]["slots"])
    wait_for(lambda: coord.stats()["live_allocations"] == baseline)


def test_direct_call_times_out_then_drops_the_late_response_without_leaks(one_worker):
    coord = one_worker
    baseline = coord.stats()["live_allocations"]
    with shmpool.connect(coord.name) as client:
        with pytest.raises(FuturesTimeout):
            client.call("_jobs:slow_big", 0.4, 300_000, timeout=0.1)  # a spilled result, late
        assert client.call("_jobs:echo", 7, timeout=10)["args"] == [7]  # same thread, same channel
        wait_for(lambda: coord.stats()["jobs"]["running"] == 0)
        assert client.call("lookup", 2, 3, timeout=10).verify()  # the late response is dropped here
        wait_for(lambda: coord.stats()["jobs"]["free"] == coord.stats()["jobs"]["slots"])
        wait_for(lambda: coord.stats()["live_allocations"] == baseline)
        with pytest.raises(LayerNotFound):
            client.call("lookup", 2, 10**9, timeout=10)


def test_direct_calls_from_many_threads_share_nothing_but_the_board(pool):
    coord, client = pool
    failed = coord.stats()["jobs"]["failed"]
    keys = [(d, l) for d in range(1, 15) for l in range(1, 201, 17)]

    def work(seed):
        rng = random.Random(seed)
        return sum(not client.call("lookup", *rng.choice(keys), timeout=30).verify() for _ in range(40))

    with ThreadPoolExecutor(12) as threads:
        assert sum(threads.map(work, range(12))) == 0
    assert coord.stats()["jobs"]["failed"] == failed


def test_a_timed_out_calls_late_answer_is_freed_while_its_channel_idles(one_worker):
    import gc
    import threading

    from shmpool.jobs import client as client_module

    coord = one_worker
    with shmpool.connect(coord.name) as client:
        outcome = []

        def timed_out_call():
            try:
                client.call("_jobs:slow", 0.3, "late", timeout=0.05)
            except FuturesTimeout:
                outcome.append("timeout")

        t = threading.Thread(target=timed_out_call)
        t.start()
        t.join()
        del t
        gc.collect()
        assert outcome == ["timeout"]
        # call() channels belong to the client's pool (at most DIRECT_CALLS_MAX), not to
        # threads; the late answer in the idle channel's ring is dropped and its slot freed.
        assert coord.stats()["jobs"]["clients"] <= 1 + client_module.DIRECT_CALLS_MAX
        wait_for(lambda: coord.stats()["jobs"]["free"] == coord.stats()["jobs"]["slots"])


def test_contexts_sent_as_arguments_are_resolved_in_the_worker(pool):
    _, client = pool
    ctx = client.reader.load_layer_context(4, 9)
    out = client.call("_jobs:echo", ctx, timeout=10)
    got = out["args"][0]
    assert (got.dimension_id, got.layer_id) == (4, 9) and bytes(got.content) == bytes(ctx.content)
