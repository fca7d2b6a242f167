"""shmpool's compiled core: atomics, futex wait/wake and a robust process-shared mutex on words of
a shared segment (``_sync``), and the job board's per-job slot transitions (``_board``).

Built by ``pip install .`` (setup.py); docs/architecture.md, "The compiled core", says why each
primitive exists and what a death at each step leaves behind.
"""

from __future__ import annotations

try:
    from ._sync import MUTEX_BYTES, RobustMutex, SharedWords, arm_faults, monotonic_ns
    from ._board import BoardCore
except ImportError as exc:  # a source checkout that was never built
    raise ImportError(
        "shmpool's compiled core is not built: run `pip install -e .` in the checkout (needs a C "
        f"compiler and the Python headers: `apt-get install gcc python3-dev`) ({exc})") from exc

__all__ = ["BoardCore", "MUTEX_BYTES", "RobustMutex", "SharedWords", "arm_faults", "monotonic_ns"]
