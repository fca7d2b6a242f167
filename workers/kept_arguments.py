"""Spilled arguments a job kept past its return, held by the worker that ran it.

A job may keep an array argument (``CACHE.append(x)``, ``LAST = x[1::2]``), as it may with
ProcessPoolExecutor. A spilled one is a view of the client's lent blocks (shmpool/jobs/arg_spill.py),
which the client frees once it has the answer: a kept view would then read whatever the table
puts there next. So after each job with spilled arguments the worker, having dropped its own
references, asks whether the arguments' memory still lives (every array made of it holds it,
shmpool/jobs/codec.py ``ArgumentSource``). If it does, the worker takes the blocks over (still
lent, now its own) and marks the answer so that its reader frees nothing (the slot's ARG_KEPT)
*before* it publishes the answer, and frees them itself once the last view is gone: checked
after every job, at every idle wake-up, and at a clean exit. A worker that dies holding them
leaves lent blocks of a dead owner; once no slot names them the coordinator's settling frees
them (arg_spill.settle_lent_arguments).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, NamedTuple

from shmpool.jobs.arg_spill import ArgumentsRef, free_arguments, take_over_arguments
from shmpool.substrate._log import logger

if TYPE_CHECKING:
    import numpy as np

    from shmpool.substrate.alloc import Handle
    from shmpool.substrate.instance import SharedInstance

__all__ = ["KeptArguments"]


class _Kept(NamedTuple):
    """Blocks this worker took over: freed once ``memory`` (what every view of them holds) is gone."""
    memory: "weakref.ref[np.ndarray[Any, Any]]"
    handle: "Handle"


class KeptArguments:
    """The spilled arguments this worker holds for views its jobs kept; empty for most workers."""

    def __init__(self, inst: "SharedInstance", pid: int, start: int) -> None:
        self.inst, self.pid, self.start = inst, pid, start
        self.held: list[_Kept] = []

    def take_over(self, memory: "weakref.ref[np.ndarray[Any, Any]]", ref: ArgumentsRef) -> bool:
        """After a job, its own references dropped: if ``memory`` still lives, own the blocks
        ``ref`` names and hold them until it goes; True if held (the answer must say so)."""
        if memory() is None:
            return False
        handle = take_over_arguments(self.inst, ref, self.pid, self.start)
        self.held.append(_Kept(memory, handle))
        logger.debug("a job kept a view of its spilled arguments {}: held by this worker", ref)
        return True

    def release_unused(self) -> int:
        """Free the blocks whose last view is gone; returns how many allocations were freed."""
        still: list[_Kept] = []
        freed = 0
        for kept in self.held:
            if kept.memory() is None:
                free_arguments(self.inst, kept.handle)
                freed += 1
            else:
                still.append(kept)
        self.held = still
        return freed

    def close(self) -> None:
        """At a clean exit: free what no view holds; the rest stays lent to this (soon dead)
        worker, freed by the coordinator's settling once it is gone, so that code still running
        at interpreter exit (atexit, finalizers of the job's module) never reads reused memory."""
        self.release_unused()
        if self.held:
            logger.debug("{} spilled argument allocations still viewed at exit: left to the coordinator",
                         len(self.held))
