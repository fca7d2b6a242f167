"""Functions tests/test_dask_reader_cache.py runs in worker processes (importable there through PYTHONPATH)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import shmpool.dask as sd

_hammer: dict[str, Any] = {}


def checked_calls(calls: int) -> dict[str, Any]:
    """Call reader() ``calls`` times; count the os.stat calls this thread made meanwhile."""
    first = sd.reader()
    counts = {"stat": 0}
    stat, me = os.stat, threading.get_ident()

    def counting_stat(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == me:  # the worker's event loop thread stats files of its own
            counts["stat"] += 1
        return stat(*args, **kwargs)

    os.stat = counting_stat
    try:
        t0 = time.monotonic()
        same = all(sd.reader() is first for _ in range(calls))
        seconds = time.monotonic() - t0
    finally:
        os.stat = stat
    return {**counts, "same": same, "seconds": seconds}


def closed_then_again() -> dict[str, Any]:
    first = sd.reader()
    first.close()
    second = sd.reader()
    dim = min(second.dimensions())
    return {"replaced": second is not first, "open": not second.closed,
            "reads": len(second.load_layer_context(dim, second.layer_ids(dim)[0]).content) > 0}


def start_hammer() -> None:
    """A thread calling reader() without pause: its answer is always as fresh as it gets."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                sd.reader()
            except Exception:  # noqa: S112 - refusing (several plugins) is what the test brings about
                continue

    thread = threading.Thread(target=run, daemon=True)
    _hammer.update(stop=stop, thread=thread)
    thread.start()


def stop_hammer() -> bool:
    _hammer["stop"].set()
    _hammer["thread"].join(10)
    return not _hammer["thread"].is_alive()


def daemon_pid() -> int:
    """The pid of the daemon whose instance this worker's reader reads."""
    return int(sd.reader().instance.coordinator()[0])
