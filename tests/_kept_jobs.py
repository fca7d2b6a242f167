"""Jobs that keep (or not) views of their array arguments past their return, for
tests/test_client_array_arguments_kept.py. What they keep lives in this worker's module globals."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

KEPT: dict[str, Any] = {}


def keep(key: str, x: np.ndarray, how: str = "whole") -> int:
    """Keep ``x`` (or a view derived from it) under ``key``; return nothing of it: this worker's pid."""
    if how == "whole":
        KEPT[key] = x
    elif how == "strided":
        KEPT[key] = x[1::2]
    elif how == "reshaped":
        KEPT[key] = x.reshape(4, -1).T
    elif how == "in_a_list":
        KEPT.setdefault(key, []).append(x)
    else:
        raise ValueError(how)
    return os.getpid()


def keep_then_fail(key: str, x: np.ndarray) -> None:
    """Keep ``x``, then raise: the error's answer must not free what was kept either."""
    KEPT[key] = x
    raise RuntimeError("failed after keeping its argument")


def digest(key: str) -> tuple[int, str]:
    """(this worker's pid, sha256 of the bytes kept under ``key``, read now)."""
    kept = KEPT[key]
    arrays = kept if isinstance(kept, list) else [kept]
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return os.getpid(), h.hexdigest()


def forget(key: str) -> int:
    """Drop what ``key`` holds: the worker may free the blocks after this job."""
    KEPT.pop(key, None)
    return os.getpid()


def total(x: np.ndarray) -> float:
    """Use the argument, keep nothing."""
    return float(x.sum())


def keep_gated(gate: str, key: str, x: np.ndarray) -> int:
    """Say which worker runs it (``gate + ".pid"``), wait until ``gate`` exists, then keep ``x``."""
    from _array_jobs import wait_for_path
    wait_for_path(gate)
    return keep(key, x)


def total_gated(gate: str, x: np.ndarray) -> float:
    """Say which worker runs it (``gate + ".pid"``), wait until ``gate`` exists, then sum ``x``
    (keeping nothing)."""
    from _array_jobs import wait_for_path
    return wait_for_path(gate, x)


def keep_unless_requeued(marker: str, key: str, x: np.ndarray) -> bool:
    """Keep ``x`` in the first run only (it creates ``marker``); a requeued run keeps nothing.
    Returns whether this run kept it."""
    if os.path.exists(marker):
        return False
    with open(marker, "w") as fh:
        fh.write(str(os.getpid()))
    keep(key, x)
    return True


def fail_using(x: np.ndarray) -> None:
    """Use the argument, keep nothing, raise: the traceback's frames must not count as keeping it."""
    y = x[::2]
    raise ValueError(f"failed with {float(y.sum())}")


def keep_and_double(key: str, x: np.ndarray) -> np.ndarray:
    """Keep ``x`` and answer ``2 * x``: a result too large for the slot (it spills too)."""
    keep(key, x)
    return x * 2
