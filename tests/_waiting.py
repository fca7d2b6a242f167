"""Polling for a condition a real process brings about, with a bound that fails the test."""

from __future__ import annotations

import time


def wait_for(predicate, seconds: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {seconds} s"
        time.sleep(0.01)


def stop_outside_locks(pid: int, locks, seconds: float = 30.0) -> None:
    """SIGSTOP ``pid`` at a moment it holds none of ``locks`` (RobustMutex: ``owner()``).

    A process stopped inside a lock round wedges every other taker of that lock (a stopped owner
    is not a dead one, so nothing recovers it) — not what a test of a stopped client means: a
    client's completion thread takes the board lock on its own every poll, and a stop landing
    there once wedged a worker's answer for the test's whole wait. Stops, checks the owners,
    and lets it run a moment and tries again while it holds one."""
    import os
    import signal

    deadline = time.monotonic() + seconds
    while True:
        os.kill(pid, signal.SIGSTOP)
        while _state(pid) not in ("T", "t"):  # the stop is delivered asynchronously
            assert time.monotonic() < deadline, f"pid {pid} not stopped within {seconds} s"
            time.sleep(0.001)
        if not any(lock.owner() == pid for lock in locks):
            return
        os.kill(pid, signal.SIGCONT)
        assert time.monotonic() < deadline, f"pid {pid} kept holding a lock for {seconds} s"
        time.sleep(0.002)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()
