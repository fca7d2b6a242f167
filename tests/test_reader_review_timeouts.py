"""A caller's timeout on the read path is honoured or refused typed, never a hang or a raw error.

``wait_generation(timeout=nan)`` slept for ever (a NaN deadline never passes); ``timeout=2**63``
raised a raw OverflowError from the condition variable, ``timeout="1"`` a TypeError from the
deadline sum, ``np.float32(0.01)`` a TypeError; ``await_generation(timeout=nan)`` timed out at
once; ``attach``, ``snapshot`` let those through unchecked. Found by a read-path review. Each
read-path wait now checks its timeout once (shmpool/substrate/timeouts.py): NaN InvalidArgument,
a non-number InvalidArgumentType, more than ~31 years no deadline, as the core's own waits.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import shmpool
from _small_coord import small_coordinator
from shmpool.errors import GenerationTimeout, InvalidArgument, InvalidArgumentType

HANG = 20.0  # seconds: only a hang takes this long


@pytest.fixture
def coord(instance_name: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    with small_coordinator(instance_name, tmp_path) as c:
        proto = c.create_proto_dimension(1, "seed")
        proto.add_layer(1, "hello")
        c.crystallize(1)
        yield c


def _in_thread(call: Callable[[], Any]) -> Any:
    """``call()``'s result or exception; fails the test if it is still running after HANG s."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # noqa: BLE001 - what it raised is the point
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(HANG)
    assert not t.is_alive(), f"still waiting after {HANG} s"
    return out[0]


WAITS: dict[str, Callable[[shmpool.Reader, Any], Any]] = {
    "wait_generation": lambda r, t: r.wait_generation(1, timeout=t),
    "await_generation": lambda r, t: asyncio.run(r.await_generation(1, timeout=t)),
    "snapshot": lambda r, t: r.snapshot(timeout=t).close(),
}


@pytest.mark.parametrize("wait", sorted(WAITS))
@pytest.mark.parametrize("timeout, error", [(float("nan"), InvalidArgument), (np.float64("nan"), InvalidArgument),
                                            ("1", InvalidArgumentType), (b"1", InvalidArgumentType),
                                            ([1], InvalidArgumentType), (True, InvalidArgumentType)],
                         ids=["nan", "np-nan", "str", "bytes", "list", "bool"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused_typed(coord, wait: str, timeout: Any,
                                                                 error: type) -> None:  # type: ignore[no-untyped-def]
    with shmpool.attach(coord.name) as reader:
        got = _in_thread(lambda: WAITS[wait](reader, timeout))
        assert isinstance(got, error), got


@pytest.mark.parametrize("timeout", [np.float32(0.05), np.int64(0), -1, 0.05])
def test_a_short_timeout_of_any_real_type_times_out(coord, timeout: Any) -> None:  # type: ignore[no-untyped-def]
    with shmpool.attach(coord.name) as reader:
        for wait in ("wait_generation", "await_generation"):
            got = _in_thread(lambda: WAITS[wait](reader, timeout))
            assert isinstance(got, GenerationTimeout), (wait, got)


@pytest.mark.parametrize("timeout", [2**63, 10**400, float("inf"), 1e300], ids=["2**63", "10**400", "inf", "1e300"])
def test_a_timeout_beyond_any_deadline_waits_for_the_publication(coord, timeout: Any) -> None:  # type: ignore[no-untyped-def]
    with shmpool.attach(coord.name) as reader:
        for wait in ("wait_generation", "await_generation"):
            before = reader.generation(1)
            publish = threading.Timer(0.2, lambda: (coord.edit_dimension(1).add_layer(2, "more"), coord.crystallize(1)))
            publish.start()
            try:
                got = _in_thread(lambda: WAITS[wait](reader, timeout))
            finally:
                publish.join()
            assert got == before + 1, (wait, got)
        reader.snapshot(timeout=timeout).close()


@pytest.mark.parametrize("timeout, error", [(float("nan"), InvalidArgument), ("x", InvalidArgumentType)])
def test_attach_refuses_a_timeout_that_is_no_number_of_seconds(coord, timeout: Any, error: type) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        shmpool.attach(coord.name, timeout=timeout)
    shmpool.attach(coord.name, timeout=2**63).close()
