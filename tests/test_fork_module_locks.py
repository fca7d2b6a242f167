"""A fork while another thread holds one of shmpool's module-level locks: the child gets a
fresh lock (shmpool/substrate/fork_safe.py), not a copy held for ever by a thread it does not
have. Found one module at a time (the job path's review, then the second read): the lazy
loguru hook's and the last-resort warnings' locks; ``shmpool.dask.reader()``'s, held while it
attaches (up to 20 s for a restarting host daemon), so a task forking meanwhile left its
child's next reader() hung; ``_dask_pin``'s, held while it opens a pinned file; the exit
clean-up's, taken again by the exit hook and SIGTERM handler a child inherits. Here the
parent holds each lock itself across the fork, which is what a thread of its would leave in
the child."""

from __future__ import annotations

import importlib
import os

import pytest

LOCKS = [("shmpool.substrate._log", "_lock"), ("shmpool._last_resort", "_lock"),
         ("shmpool.coordinator.exit_cleanup", "_lock"), ("shmpool.dask", "_readers_lock"),
         ("shmpool._dask_pin", "_open_lock")]


@pytest.mark.parametrize("module_name, lock", LOCKS, ids=[f"{m}.{n}" for m, n in LOCKS])
def test_a_child_forked_while_a_module_lock_is_held_can_take_it(module_name, lock):
    if "dask" in module_name:
        pytest.importorskip("distributed")
    module = importlib.import_module(module_name)
    with getattr(module, lock):
        pid = os.fork()
        if pid == 0:
            # 2 s: only a bound for the copy held by nobody (it would never be released).
            os._exit(0 if getattr(module, lock).acquire(timeout=2) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child found the lock held"
