"""Victim processes for tests/test_board_submit_many_faults.py (spawned: module-level functions)."""

from __future__ import annotations

import time

import shmpool
from shmpool.substrate import _faults


def map_dies_at(name: str, fault: str, items: int) -> None:
    """Connect, arm ``fault``, then map over ``items`` in chunks (BoardCore.submit_many) until it fires."""
    client = shmpool.connect(name)
    _faults.arm(fault)
    list(client.map("_jobs:slow", [0.02] * items, range(items), chunksize=2, timeout=60))
    time.sleep(3600)  # the point never fired: the test sees a live process and fails
