"""``Reader.close()`` racing threads that wait for a generation (issue 22's defect, issue 24's
"never a raw error"): every waiter gets ReaderClosed, never the ValueError of a memoryview that
close() released under it. The old test (test_wait_generation) hit it 12 times in 200."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

import shmpool
from shmpool import ReaderClosed
from shmpool.coordinator import Coordinator
from shmpool.substrate.layout import RD

ROUNDS = 150
WAITERS = 8  # threads per reader: the later ones take the condition back after close() is done


@pytest.fixture
def coord(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=0) as c:
        yield c


def _race(name: str, dim: int, rng: random.Random, asynchronous: bool) -> list[BaseException]:
    reader = shmpool.attach(name)
    errors: list[BaseException] = []
    started = threading.Barrier(WAITERS + 1)

    def wait() -> None:
        started.wait()
        try:
            if asynchronous:
                asyncio.run(reader.await_generation(dim, timeout=30))
            else:
                reader.wait_generation(dim, timeout=30)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=wait) for _ in range(WAITERS)]
    for t in threads:
        t.start()
    started.wait()
    if rng.random() < 0.5:  # asleep in the dispatcher's wait, or anywhere before it
        armed = reader.instance.control.readers[:, RD.WAITING]
        while not armed.any():
            time.sleep(0.0005)
        time.sleep(0.002)
    else:
        time.sleep(rng.random() * 0.002)
    reader.close()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a waiter hung after close()"
    return errors


@pytest.mark.parametrize("asynchronous", [False, True], ids=["wait_generation", "await_generation"])
def test_every_waiter_gets_reader_closed_when_its_reader_closes_under_it(coord, asynchronous):
    dim = min(coord.reader().dimensions())
    rng = random.Random(24)
    wrong = []
    for _ in range(ROUNDS):
        errors = _race(coord.name, dim, rng, asynchronous)
        assert len(errors) == WAITERS
        wrong += [e for e in errors if not isinstance(e, ReaderClosed)]
    assert not wrong, f"{len(wrong)} of {WAITERS * ROUNDS} waiters got {sorted({repr(e) for e in wrong})}"
