"""Polling for a condition a real process brings about, with a bound that fails the test."""

from __future__ import annotations

import time


def wait_for(predicate, seconds: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {seconds} s"
        time.sleep(0.01)
