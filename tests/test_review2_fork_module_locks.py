"""A fork while another thread holds one of shmpool's Dask-side module locks, or the
coordinator's exit-cleanup lock: the child gets a fresh lock, as bcb8ee6 gave the lazy loguru
hook's and the last-resort warnings' locks.

Found by the second review (the sibling of bcb8ee6): ``shmpool.dask.reader()`` holds
``_readers_lock`` while it attaches, which waits up to its timeout (20 s) for a restarting host
daemon, and ``_dask_pin`` holds ``_open_lock`` while it opens a pinned generation's file. A
task that forks meanwhile (a multiprocessing pool with the fork start method, in a worker
whose other threads run tasks) left the child a copy held by a thread it does not have: the
child's first reader() past its cached answer, or pinned lookup, hung for ever. The exit
cleanup's lock (taken by a Coordinator's start and stop) is taken again by the exit hook and the
SIGTERM handler a child inherits: a copy held there hung the child's exit. Here the parent
holds each lock itself across the fork, which is what a thread of its would leave in the child.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("distributed")

import shmpool._dask_pin as dask_pin  # noqa: E402
import shmpool.coordinator.exit_cleanup as exit_cleanup  # noqa: E402
import shmpool.dask as shmpool_dask  # noqa: E402


@pytest.mark.parametrize("module, lock", [(shmpool_dask, "_readers_lock"), (dask_pin, "_open_lock"),
                                          (exit_cleanup, "_lock")],
                         ids=["dask._readers_lock", "_dask_pin._open_lock", "exit_cleanup._lock"])
def test_a_child_forked_while_another_module_lock_is_held_can_take_it(module, lock):
    with getattr(module, lock):
        pid = os.fork()
        if pid == 0:
            # 2 s: only a bound for the copy held by nobody (it would never be released).
            os._exit(0 if getattr(module, lock).acquire(timeout=2) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child found the lock held"
