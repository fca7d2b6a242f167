"""map() submits its chunks in batches (one lock round each, registered as queued), and futures
make their Condition only when someone looks (QuietFuture): real workers, a small board.

- more chunks than the board has slots: every result comes back, in order (the later batches wait
  for slots that only the answers to the earlier ones free);
- an item msgpack cannot carry, far into the stream: TypeError, and nothing of the map is left
  queued or holding a slot;
- a thread already blocked in result(), and callbacks added before and after the answer, are all
  told: the two ways a QuietFuture can be settled (with and without a Condition).
"""

from __future__ import annotations

import os
import secrets
import threading

import pytest
from _waiting import wait_for
from conftest import TEST_PREFIX, TESTS

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.substrate.names import list_objects

SLOTS = 8


@pytest.fixture(scope="module")
def shared_coord(sample_dir):
    """One coordinator for the module: every test here makes its own client and kills nothing
    (each used to start its own coordinator, two worker interpreters apiece)."""
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"  # module-scoped, so not from the make_name fixture
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        with Coordinator(name, data_dir=sample_dir, workers=2, job_slots=SLOTS, job_modules=["_jobs"]) as c:
            yield c
    assert list_objects(name) == ([], [])


@pytest.fixture
def coord(shared_coord):
    """The shared coordinator, left as the test found it: every slot free, no client channel."""
    yield shared_coord
    wait_for(lambda: shared_coord.stats()["jobs"]["free"] == SLOTS, 30, "every slot free after the test")
    wait_for(lambda: shared_coord.stats()["jobs"]["clients"] == 0, 30, "every channel released after the test")


def test_map_with_more_chunks_than_slots_returns_every_result_in_order(coord):
    with shmpool.connect(coord.name) as client:
        items = range(25 * SLOTS * 3)  # 25 x the board's slots in chunks of 3
        assert list(client.map("_jobs:double", items, chunksize=3, timeout=60)) == [2 * x for x in items]
        assert list(client.map("_jobs:double", range(5 * SLOTS), timeout=60)) == [2 * x for x in range(5 * SLOTS)]


def test_map_with_an_unsendable_item_late_in_the_stream_leaves_nothing_queued(coord):
    board = coord._board
    with shmpool.connect(coord.name) as client:
        items: list[object] = list(range(40))
        items[37] = object()  # encoded after several batches are queued
        with pytest.raises(TypeError, match="cannot send"):
            client.map("_jobs:slow", [0.05] * 40, items, timeout=60)
        # The queued part was withdrawn or ran: every slot comes back, nothing waits on our channel.
        wait_for(lambda: board.counts()["free"] == SLOTS and not client._futures, 30, "the map's slots freed")
        assert list(client.map("_jobs:double", range(10))) == [2 * x for x in range(10)]


def test_a_waiting_thread_and_callbacks_are_told_of_the_answer(coord):
    with shmpool.connect(coord.name) as client:
        future = client.submit("_jobs:slow", 0.5, "late")
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(future.result(30)))
        waiter.start()  # blocked in result() before the answer: it made the Condition
        early_calls: list[object] = []
        future.add_done_callback(lambda f: early_calls.append(f.result()))
        waiter.join(30)
        assert got == ["late"] and early_calls == ["late"]
        quick = client.submit("_jobs:slow", 0, "quick")
        wait_for(quick.done, 30, "the quick job answered")  # nobody looked: settled without a Condition
        late_calls: list[object] = []
        quick.add_done_callback(lambda f: late_calls.append(f.result()))
        assert late_calls == ["quick"] and quick.result(0) == "quick" and quick.exception(0) is None


def test_map_over_one_iterable_sends_each_item_as_the_one_argument(coord):
    # Chunks of one iterable travel as the items themselves (RequestFlags.SINGLE): a tuple item
    # must still arrive as one tuple argument, and several iterables still as argument lists.
    with shmpool.connect(coord.name) as client:
        pairs = [(i, -i) for i in range(50)]
        assert [r["args"] for r in client.map("_jobs:echo", pairs, chunksize=4)] == [[p] for p in pairs]
        assert list(client.map(abs, range(-30, 30), chunksize=7)) == [abs(x) for x in range(-30, 30)]
        assert list(client.map(pow, range(20), [2] * 20, chunksize=3)) == [x * x for x in range(20)]


def test_a_thread_waiting_on_one_of_many_futures_settles_them_all_once(coord):
    # result() with other futures pending drains the channel in the waiting thread (help): every
    # future still ends with its own answer, and each callback runs exactly once.
    with shmpool.connect(coord.name) as client:
        calls: dict[int, int] = {}
        futures = [client.submit("_jobs:double", i) for i in range(200)]
        for i, future in enumerate(futures):
            future.add_done_callback(lambda f, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))
        assert futures[-1].result(30) == 2 * 199
        assert [f.result(30) for f in futures] == [2 * i for i in range(200)]
        wait_for(lambda: len(calls) == 200, 30, "every callback run")
        assert set(calls.values()) == {1}


def test_a_callback_run_by_a_waiting_thread_may_shut_the_client_down(coord):
    # A waiter that helps settles answers in its own thread, so their callbacks may run there:
    # one that shuts the client down and waits for it must not wait on the ring's lock, which
    # the owner's thread needs to detach (it is released before anything is settled).
    client = shmpool.connect(coord.name)
    futures = [client.submit("_jobs:double", i) for i in range(50)]
    futures[-1].add_done_callback(lambda f: client.shutdown(wait=True))
    assert [f.result(30) for f in futures] == [2 * i for i in range(50)]
    wait_for(lambda: client._lifecycle.value == "closed", 30, "the client shut down from a callback")
