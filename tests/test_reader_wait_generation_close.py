"""Reader.close() while a thread waits in wait_generation: the waiter gets ReaderClosed, never a raw error.

The Reader unmaps its views right after the waiter's close() returns; a waiting thread notified
by close() but scheduled only after that used to read the released directory view and raise a
raw ValueError (4 times in 200 closes here, 12 in 200 in issue 20's loop). The window is a thread
switch wide and no fault point reaches into Python's condition variable, so the test repeats the
close often enough that the old code failed it nearly every run (1 - (196/200)^150: 95%).
"""

from __future__ import annotations

import threading
from pathlib import Path

import shmpool
from _small_coord import small_coordinator
from _waiting import wait_for
from shmpool.errors import ReaderClosed
from shmpool.substrate.layout import RD

import _introspect as peek

ROUNDS = 150


def test_closing_a_reader_fails_its_waiters_with_reader_closed_every_time(instance_name: str, tmp_path: Path) -> None:
    with small_coordinator(instance_name, tmp_path) as coord:
        proto = coord.create_proto_dimension(1, "seed")
        proto.add_layer(1, "hello")
        coord.crystallize(1)
        outcomes: dict[str, int] = {}
        for _ in range(ROUNDS):
            reader = shmpool.attach(instance_name)
            got: list[BaseException] = []

            def wait(r: shmpool.Reader = reader, out: list[BaseException] = got) -> None:
                try:
                    r.wait_generation(1, timeout=60)
                except BaseException as exc:  # noqa: BLE001 - what it raised is the point
                    out.append(exc)

            waiter = threading.Thread(target=wait)
            waiter.start()
            wait_for(lambda: peek.reader_row(coord, reader)[RD.WAITING] != 0, 30, "the waiter armed")
            reader.close()
            waiter.join(30)
            assert not waiter.is_alive(), "wait_generation still waits on a closed reader"
            kind = type(got[0]).__name__ if got else "returned"
            outcomes[kind] = outcomes.get(kind, 0) + 1
        assert outcomes == {ReaderClosed.__name__: ROUNDS}, outcomes
