"""A Client dropped without shutdown() gives its channels and its completion thread back.

ProcessPoolExecutor cleans up when it is garbage collected; a Client whose completion thread
held it alive kept its board channel for ever, so with ``max_clients=3`` the fourth connect after
three dropped clients failed "all 3 client channels are in use" (issue 25).
"""

from __future__ import annotations

import gc
import secrets
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import TEST_PREFIX
from _waiting import wait_for

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.substrate.names import list_objects

CHANNELS = 3


def _client_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("shmpool-client") and name in t.name]


@pytest.fixture(scope="module")
def shared() -> Iterator[Coordinator]:
    """One coordinator for the module (each test used to start its own): every test leaves it
    with no client channel and every slot free, which the next test's counts start from."""
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"  # module-scoped, so not from the make_name fixture
    with Coordinator(name, workers=1, max_clients=CHANNELS, job_slots=8) as coord:
        yield coord
    assert list_objects(name) == ([], [])


@pytest.fixture
def coord(shared: Coordinator) -> Iterator[Coordinator]:
    yield shared
    wait_for(lambda: shared._board.counts()["clients"] == 0, 10, "every channel released after the test")
    wait_for(lambda: shared._board.counts()["free"] == 8, 10, "every slot free after the test")


@pytest.mark.parametrize("use", ["submit", "call", "idle"])
def test_dropped_clients_release_their_channels_and_threads(coord, use):
    instance_name = coord.name
    board = coord._board
    for round_ in range(2 * CHANNELS):  # twice as many as there are channels
        client = shmpool.connect(instance_name, timeout=5)
        if use == "submit":
            assert client.submit(pow, round_, 2).result(10) == round_ ** 2
        elif use == "call":  # a call() channel of its own as well
            assert client.call(pow, round_, 2, timeout=10) == round_ ** 2
        del client
        gc.collect()
        # The release runs in the dropped client's own thread, within its next wake-up
        # (0.1 s): the bound only catches a client that never lets go.
        wait_for(lambda: board.counts()["clients"] == 0, 10, "the dropped client's channels released")
    wait_for(lambda: not _client_threads(instance_name), 10, "every completion thread ended")
    assert board.counts()["free"] == 8
    with shmpool.connect(instance_name, timeout=5) as client:
        assert client.submit(pow, 3, 2).result(10) == 9


def test_a_dropped_client_with_a_job_in_flight_releases_once_the_job_is_settled(coord):
    instance_name = coord.name
    client = shmpool.connect(instance_name, timeout=5)
    client.submit("ping")  # its future is dropped too
    del client
    gc.collect()
    wait_for(lambda: coord._board.counts()["clients"] == 0, 10, "the channel released")
    wait_for(lambda: coord._board.counts()["free"] == 8, 10, "the slot freed")


def test_a_future_kept_after_its_client_was_dropped_still_gets_its_result(coord):
    instance_name = coord.name
    client = shmpool.connect(instance_name, timeout=5)
    kept = client.submit(time.sleep, 0.5)  # still running when the client goes
    squares = [client.submit(pow, i, 2) for i in range(4)]
    del client
    gc.collect()
    assert kept.result(10) is None
    assert [f.result(10) for f in squares] == [0, 1, 4, 9]
    wait_for(lambda: coord._board.counts()["clients"] == 0, 10, "the channel released")
    wait_for(lambda: not _client_threads(instance_name), 10, "the completion thread ended")
