"""A client's job slots, with real workers: a withdrawn future does not swallow a later answer,
call()'s last slot is not lost when its next submit fails, a submitter waiting for a slot gives up
once its coordinator dies, and a waiter interrupted by a signal leaves no registration behind.
(A slot released twice is a board test: tests/test_board_protocol.py.)
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import signal
import threading
import time

import pytest

import _board_children as children
import _introspect as peek
import shmpool
from _waiting import wait_for
from conftest import TEST_PREFIX, TESTS
from shmpool.coordinator import Coordinator
from shmpool.errors import AttachError, RequestTooLarge
from shmpool.substrate.names import cleanup, list_objects

SLOTS = 8


pytestmark = pytest.mark.usefixtures("user_jobs_importable")


@pytest.fixture(scope="module")
def _shared(sample_dir):
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"  # module-scoped, so not from the make_name fixture
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        with Coordinator(name, data_dir=sample_dir, workers=2, job_slots=SLOTS, max_clients=16,
                         job_modules=["_jobs"]) as c:
            yield c
    assert list_objects(name) == ([], [])


@pytest.fixture
def coord(_shared):
    """One coordinator for the tests that kill nothing (each used to start its own, two worker
    interpreters apiece), left as each test found it: every slot free, no channel."""
    yield _shared
    wait_for(lambda: peek.job_counts(_shared)["free"] == SLOTS, 30, "every slot free after the test")
    wait_for(lambda: peek.job_counts(_shared)["clients"] == 0, 30, "every channel released after the test")


def test_a_withdrawn_future_does_not_swallow_the_next_answer_in_its_slot(coord):
    with shmpool.connect(coord.name) as client:
        blockers = [client.submit("_jobs:slow", 0.5, i) for i in range(2)]  # both workers busy
        queued = client.submit("_jobs:slow", 0, "withdrawn")
        assert queued.cancel()
        assert not peek.client_has_future_for(client, queued._slot)  # nothing left under the slot
        later = [client.submit("_jobs:slow", 0, i) for i in range(SLOTS - 2)]
        assert [f.result(10) for f in later] == list(range(SLOTS - 2))
        assert [f.result(10) for f in blockers] == [0, 1]


def test_a_failed_call_does_not_lose_the_previous_calls_slot(coord):
    with shmpool.connect(coord.name) as client:
        huge = b"x" * (70 * 1024)
        for i in range(SLOTS):
            assert client.call("_jobs:echo", i, timeout=30)["args"] == [i]
            with pytest.raises(RequestTooLarge):
                client.call("_jobs:echo", huge, timeout=30)
        deadline = time.monotonic() + 30  # a hang catcher: the slots come back within milliseconds
        while peek.job_counts(coord)["free"] != SLOTS:
            assert time.monotonic() < deadline, f"slots lost: {peek.job_counts(coord)}"
            time.sleep(0.01)
        with shmpool.connect(coord.name) as other:
            assert other.submit("_jobs:echo", 1, timeout=1).result(30)["args"] == [1]


def test_a_submitter_waiting_for_a_slot_gives_up_once_the_coordinator_dies(make_name, sample_dir):
    name = make_name()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=children.coordinator_with_a_small_board, args=(name, str(sample_dir), ready),
                       daemon=True)
    proc.start()
    try:
        assert ready.wait(60)
        client = shmpool.connect(name)
        busy = [client.submit("_jobs:slow", 30, i) for i in range(SLOTS)]
        out: dict = {}

        def ninth():
            try:
                client.submit("_jobs:echo", 9)  # no timeout: waits for a slot
            except BaseException as exc:
                out["error"] = exc

        waiter = threading.Thread(target=ninth, daemon=True)
        waiter.start()
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        waiter.join(3)
        assert not waiter.is_alive(), "submit() still waits for a slot nobody will ever free"
        assert isinstance(out.get("error"), AttachError), out
        assert all(isinstance(f.exception(5), AttachError) for f in busy)
        client.close()
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        cleanup(name)
    assert list_objects(name) == ([], [])


class _Interrupted(Exception):
    pass


def test_a_waiter_interrupted_by_a_signal_leaves_no_phantom_registration(coord):
    with shmpool.connect(coord.name) as client:
        busy = [client.submit("_jobs:slow", 1.0, i) for i in range(SLOTS)]

        def interrupt(*_):
            raise _Interrupted

        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            # The core's futex wait runs the handler and ends with what it raised (PEP 475).
            with pytest.raises(_Interrupted):
                client.submit("_jobs:echo", 1, timeout=5)  # interrupted while waiting for a slot
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert peek.free_slot_waiters(coord) == 0
        assert [f.result(10) for f in busy] == list(range(SLOTS))
        assert peek.channels_waiting_for_a_slot(coord) == 0  # nor counted in its channel
