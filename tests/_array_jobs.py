"""Jobs for the array-argument tests (tests/test_client_array_arguments.py), submitted as callables."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

import shmpool


def same(x: Any) -> Any:
    return x


def scaled(x: np.ndarray, k: float) -> np.ndarray:
    """A large argument in, a large result out (computed from the argument in place)."""
    return x * k


def total(x: np.ndarray) -> float:
    return float(x.sum())


def seen(x: np.ndarray) -> dict[str, Any]:
    """How the argument reached the job: an ndarray view of shared memory, or an array of its own."""
    located = True
    try:  # raises OutOfBounds unless a pool segment of this worker's mapping holds the bytes
        shmpool.worker_reader().instance.locate(memoryview(x.ravel(order="K").view(np.uint8)))
    except shmpool.ShmPoolError:
        located = False
    return {"type": type(x).__name__, "dtype": x.dtype.str, "shape": list(x.shape),
            "f_order": bool(x.flags.f_contiguous and not x.flags.c_contiguous), "writeable": bool(x.flags.writeable),
            "in_shared_memory": located, "sum": float(x.sum()) if x.dtype.kind in "fiub" else None}


def keywords(*, left: np.ndarray, right: np.ndarray) -> float:
    return float(left.sum() - right.sum())


def wait_for_path(path: str, x: Any = None, out: str | None = None, limit: float = 60.0) -> float:
    """Say which worker runs it (``path + ".pid"``), wait until ``path`` exists, then return the
    sum of ``x``, also written to ``out`` (a job whose client left has nobody else to tell)."""
    pid_file = Path(f"{path}.pid")
    tmp = Path(f"{pid_file}.{os.getpid()}.tmp")  # its own: two blockers on one gate must not race
    tmp.write_text(str(os.getpid()))
    tmp.replace(pid_file)
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    value = float(np.asarray(x).sum()) if x is not None else 0.0
    if out is not None:
        written = Path(f"{out}.{os.getpid()}.tmp")
        written.write_text(repr(value))
        written.replace(out)
    return value


def sleep_then_total(seconds: float, x: np.ndarray) -> float:
    time.sleep(seconds)
    return float(x.sum())


def kill_worker_once(marker: str, x: np.ndarray) -> float:
    """SIGKILL the first worker that runs it, mid-job with the argument mapped; the requeued run
    in another worker reads the same argument and answers its sum."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        float(x.sum())  # the argument is in use when the worker dies
        os.kill(os.getpid(), signal.SIGKILL)
    return float(x.sum())


def write_into(x: np.ndarray) -> float:
    """Write into the argument: refused for a spilled one (a read-only view of the client's bytes)."""
    x[0] = 7
    return float(x[0])


def seen_each(xs: list[np.ndarray]) -> list[bool]:
    """For each array of a list argument: whether it reached the job in shared memory."""
    return [bool(seen(x)["in_shared_memory"]) for x in xs]
