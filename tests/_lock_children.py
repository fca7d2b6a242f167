"""Processes that stop (SIGSTOP) while holding an instance's table lock, for the timeout tests."""

from __future__ import annotations

import time

import shmpool
from shmpool.substrate import _faults


def attach_and_stop_in_the_table_lock(name: str) -> None:
    """Attach with the table-lock fault armed: the reader-row claim stops inside the lock."""
    _faults.arm("lock.held.table:stop")
    shmpool.attach(name)
    time.sleep(3600)  # the point never fired: the test sees a running process and fails
