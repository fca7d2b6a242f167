"""A job for tests/test_board_core_faults.py: arm a fault point in the worker that runs it."""

from __future__ import annotations

from shmpool.substrate import _faults


def arm_fault(reader: object, spec: str) -> str:
    _faults.arm(spec)  # fires at the named point of this worker's next steps (its finish, say)
    return "armed"
