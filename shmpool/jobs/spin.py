"""The opt-in low-latency mode: busy-wait briefly for an answer before sleeping on a semaphore.

A sleeping waiter costs a futex wake-up and a context switch per hop (~25 µs each here, the
floor under every semaphore or pipe round trip); a waiter that spins sees the word change within
a microsecond. Spinning burns a core, so it is bounded (``spin_us`` per wait, after which the
waiter sleeps as usual) and off by default; ``"auto"`` turns it on only on machines with at
least SPIN_MIN_CPUS cores, where a spinning client and a spinning worker do not take the core
the other needs. An explicit number is obeyed anywhere (the benchmark measures it on 2 cores).
"""

from __future__ import annotations

import os

from ..errors import InvalidArgument

__all__ = ["spin_seconds", "SPIN_MIN_CPUS", "AUTO_SPIN_US", "SPIN_ENV"]

SPIN_MIN_CPUS = 4
AUTO_SPIN_US = 50.0
MAX_SPIN_US = 10_000.0  # beyond 10 ms a spin is a busy loop, not a latency trick
SPIN_ENV = "SHMPOOL_WORKER_SPIN_US"  # how a coordinator passes worker_spin_us to its workers


def spin_seconds(spin_us: float | str | None) -> float:
    """Seconds to spin for a ``spin_us`` setting (None or 0: off; "auto": by core count)."""
    if spin_us is None or spin_us == 0:
        return 0.0
    if spin_us == "auto":
        return AUTO_SPIN_US / 1e6 if (os.cpu_count() or 1) >= SPIN_MIN_CPUS else 0.0
    if isinstance(spin_us, bool) or not isinstance(spin_us, (int, float)) or not 0 <= spin_us <= MAX_SPIN_US:
        raise InvalidArgument(argument="spin_us", value=spin_us,
                              reason=f"a number of microseconds in [0, {MAX_SPIN_US:g}], None or 'auto'")
    return float(spin_us) / 1e6
