"""A fork while another thread holds one of shmpool's module-level locks (the lazy loguru
hook's, the last-resort warnings'): the child gets a fresh lock, not a copy held for ever by a
thread it does not have (noticed by the job path's review; the Future condition lock got the
same fix there). Here the parent holds each lock itself across the fork, which is what a
thread of its would leave in the child."""

from __future__ import annotations

import os

import pytest

import shmpool._last_resort as last_resort
import shmpool.substrate._log as log


@pytest.mark.parametrize("module", [log, last_resort], ids=["_log", "_last_resort"])
def test_a_child_forked_while_a_module_lock_is_held_can_take_it(module):
    with module._lock:
        pid = os.fork()
        if pid == 0:
            # 2 s: only a bound for the copy held by nobody (it would never be released).
            os._exit(0 if module._lock.acquire(timeout=2) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child found the lock held"
