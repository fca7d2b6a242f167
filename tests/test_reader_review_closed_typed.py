"""Every Reader method called on a closed reader, or racing its close(), raises ReaderClosed.

The lookups always did; ``dimensions()``, ``dimension_id(name)``, ``get(name, ...)``,
``stats()``, ``pins()`` and ``snapshot()`` read the control segment's views without the
mapping's lock or an open check, so once close() had unmapped them (nothing held) they raised a
raw ``ValueError: operation forbidden on released memoryview object`` or a ``TypeError`` on
None (found by a read-path review's close-versus-lookups stress: 8,600 raw ValueErrors from
``dimensions()`` in 150 closes).
"""

from __future__ import annotations

import random
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

import shmpool
from _small_coord import small_coordinator
from shmpool.errors import ReaderClosed

ROUNDS = 60

CALLS: dict[str, Callable[[shmpool.Reader], Any]] = {
    "dimensions": lambda r: r.dimensions(),
    "dimension_id": lambda r: r.dimension_id("seed"),
    "get_by_name": lambda r: r.get("seed", 1),
    "stats": lambda r: r.stats(),
    "pins": lambda r: r.pins(),
    "snapshot": lambda r: r.snapshot().close(),
    "generation": lambda r: r.generation(1),
}


@pytest.fixture
def coord(instance_name: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    with small_coordinator(instance_name, tmp_path) as c:
        proto = c.create_proto_dimension(1, "seed")
        proto.add_layer(1, "hello")
        c.crystallize(1)
        yield c


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_closed_reader_refuses_typed(coord, call: str) -> None:  # type: ignore[no-untyped-def]
    reader = shmpool.attach(coord.name)
    CALLS[call](reader)  # works while open
    reader.close()
    with pytest.raises(ReaderClosed):
        CALLS[call](reader)


def test_calls_racing_close_raise_reader_closed_or_return(coord) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    wrong: dict[str, int] = {}
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # thread switches inside the calls, where close() can land
    try:
        for _ in range(ROUNDS):
            reader = shmpool.attach(coord.name)
            start = threading.Barrier(len(CALLS) + 1)

            def hammer(call: Callable[[shmpool.Reader], Any], r: shmpool.Reader = reader,
                       go: threading.Barrier = start) -> None:
                go.wait()
                for _ in range(200):
                    try:
                        call(r)
                    except ReaderClosed:
                        return
                    except BaseException as exc:  # noqa: BLE001 - any other error is the failure
                        key = f"{type(exc).__name__}: {exc}"
                        wrong[key] = wrong.get(key, 0) + 1
                        return

            threads = [threading.Thread(target=hammer, args=(c,)) for c in CALLS.values()]
            for t in threads:
                t.start()
            start.wait()
            threading.Event().wait(rng.random() * 0.003)
            reader.close()
            for t in threads:
                t.join(30)
                assert not t.is_alive()
    finally:
        sys.setswitchinterval(interval)
    assert not wrong, wrong
