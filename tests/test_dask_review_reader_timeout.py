"""``shmpool.dask.reader(timeout=...)`` refuses a timeout that is no number of seconds, before it
waits: a NaN deadline never passed, and the wait held the module's lock for ever, so every later
``reader()`` call of the worker process (every task) hung behind it; a str raised a raw
TypeError, also behind that lock (found by a read-path review). No cluster is needed: no plugin
serves this host, so a valid timeout ends in AttachError.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

from shmpool import dask as sd  # noqa: E402
from shmpool.errors import AttachError, InvalidArgument, InvalidArgumentType  # noqa: E402

HANG = 20.0  # seconds: only a hang takes this long


def _reader(timeout: Any) -> BaseException | None:
    out: list[BaseException | None] = []

    def run() -> None:
        try:
            sd.reader("review-no-such-plugin", timeout=timeout)
            out.append(None)
        except BaseException as exc:  # noqa: BLE001 - what it raised is the point
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(HANG)
    assert not t.is_alive(), f"reader(timeout={timeout!r}) still waiting after {HANG} s"
    return out[0]


@pytest.mark.parametrize("timeout, error", [(float("nan"), InvalidArgument), ("1", InvalidArgumentType),
                                            (True, InvalidArgumentType)], ids=["nan", "str", "bool"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused_and_blocks_nobody(timeout: Any, error: type) -> None:
    assert isinstance(_reader(timeout), error)
    assert isinstance(_reader(0.05), AttachError)  # the next call is not stuck behind it
