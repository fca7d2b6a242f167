"""Array arguments too large for a slot, from a client to the worker that runs the job.

A request must fit in its slot's request area (``job_payload``, 64 KiB by default), but an array
argument need not travel in it: the client encodes the request with ``codec.encode_spilling``,
which leaves every array above a SPILL_THRESHOLD-th of the payload out of the request and lists
it at an aligned offset in an ``ArgumentPlan``. The client then makes **one** allocation of the table
for all of them and copies each array there: the only copy of its bytes on the whole way (a
non-contiguous array is gathered into it by the same copy). The slot's ARG_RECORD / ARG_SERIAL
name that allocation; the worker that takes the request maps it and hands the job a read-only
ndarray *view* of it, valid as long as anything references it: a job may keep it past its
return, and then its worker holds the allocation (the "kept?" step below).

**The rule: no sweep frees blocks a slot may name.** The allocation is made *lent*
(RecordState.LENT): owned by the client, but skipped by the table's dead-owner sweep, whichever
process runs it (the coordinator every second, any process whose allocation finds no room, the
next holder after a lock takeover). Only :func:`settle_lent_arguments`, run by the coordinator,
frees the lent blocks of a dead owner, and only those no slot names. An earlier design let the
sweep reclaim them like any dead owner's and had the supervision round (every 0.1 s) hand an
orphaned job's arguments to the coordinator first; a sweep between the client's death and that
round freed them under the worker, and the job computed on reused memory. A predicate the sweep
would ask of the board was rejected too: a process that sweeps need not have the board attached,
and the table (substrate) must not import the jobs layer. Their life, in the order that keeps
every crash harmless:

    client   allocate + copy   lent blocks, the client's: a submit that fails frees them at once
                               (an asubmit waiting for a slot tries, and copies, only when one is
                               free: a waiting request holds no memory);
                               a client that dies before its submit leaves them named by no slot,
                               and the coordinator's settling frees them
             submit            the slot names them, written with the request under the board lock
    worker   take, view, run   reads them in place; a worker that dies leaves them to the requeued
                               run (they are still the client's)
    worker   kept?             after the job, its own references dropped, the worker looks whether
                               any array of the arguments still lives (the job kept a view: a
                               global, a cache, x[1::2]). If so, *before* answering, it takes them
                               over (transfer to itself, still LENT) and writes the request's SEQ
                               in the slot's ARG_KEPT; killed in between, it leaves them to the
                               requeued run (the slot still names them; leaving the dead worker
                               zeroes ARG_KEPT). Then it frees them once the last view is gone
                               (workers/kept_arguments.py); if it dies first, they are lent blocks
                               of a dead owner, and the coordinator's settling frees them once no
                               slot in use names them
    client   answer, free      once the answer is decoded (or the job is withdrawn, or an answer
                               nobody waits for is dropped), the client frees them, unless
                               ARG_KEPT says the worker kept them (:func:`answer_arguments`; so do
                               a channel's release and a dead client's settling)
    orphan                     a job still running when its client lets go (close, or death) is
                               ORPHANED: its arguments are handed to the board (no owner); the worker
                               frees them when it finishes (or keeps them, as above), the
                               coordinator's settling once no slot names them if that worker
                               dies (BOARD_OWNER: no live owner). An adoption leaves blocks a
                               live worker took over (AllocationTable.transfer_unless_taken).
                               A dead client's blocks are safe before that hand-over too: lent
                               blocks a slot names outlive every sweep

Freeing is tolerant, as for spilled results: the blocks may have been freed already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from ..substrate._log import logger

from ..errors import ArgumentTooLarge, ShmPoolError
from .codec import ArgumentPlan
from .jobs_layout import SLOT_COLS, SlotCol

if TYPE_CHECKING:
    from ..substrate.alloc import Handle
    from ..substrate.instance import SharedInstance
    from .jobboard import JobBoard

__all__ = ["ArgumentsRef", "ArgumentsLeft", "NO_ARGUMENTS", "SPILL_THRESHOLD", "spill_over", "read_arguments", "write_arguments",
           "open_arguments", "free_arguments", "adopt_arguments", "argument_name", "settle_lent_arguments",
           "answer_arguments", "mark_kept", "take_over_arguments", "BOARD_OWNER"]

# An array argument of more than payload // SPILL_THRESHOLD bytes spills (16 KiB of the default
# 64 KiB): a request then keeps room for several small ones inline, where a copy is cheaper than
# an allocation (two lock rounds of the table). A request that still does not fit is encoded
# again with every non-empty array spilled (the client's _encode).
SPILL_THRESHOLD = 4
NO_ARGUMENTS = -1  # SlotCol.ARG_RECORD of a request whose arguments all travel in the slot
_COLS, _RECORD, _SERIAL = SLOT_COLS, int(SlotCol.ARG_RECORD), int(SlotCol.ARG_SERIAL)
_SEQ, _KEPT = int(SlotCol.SEQ), int(SlotCol.ARG_KEPT)


class ArgumentsRef(NamedTuple):
    """Where a request's spilled arguments lie: an allocation of the table (its slot's ARG_* columns)."""
    record: int
    serial: int


class ArgumentsLeft:
    """The spilled arguments of the jobs a channel's settling ended (JobBoard.release_channel):
    ``orphaned`` ones a worker still reads (to hand to the board), ``ended`` ones nobody
    will read again (to free)."""

    def __init__(self) -> None:
        self.orphaned: list[ArgumentsRef] = []
        self.ended: list[ArgumentsRef] = []


def spill_over(payload: int) -> int:
    """Bytes above which an array argument spills, for a board of slots of ``payload`` bytes."""
    return payload // SPILL_THRESHOLD


def read_arguments(slots_mv: memoryview, slot: int) -> ArgumentsRef | None:
    """The spilled arguments recorded in ``slot`` (flat int64 view of the slot rows), or None."""
    r = slot * _COLS
    record = slots_mv[r + _RECORD]
    return None if record < 0 else ArgumentsRef(record, slots_mv[r + _SERIAL])


def answer_arguments(slots_mv: memoryview, slot: int) -> ArgumentsRef | None:
    """The spilled arguments the reader of ``slot``'s answer frees: those its request names,
    unless the worker kept them (ARG_KEPT is the slot's SEQ: that worker frees them); or None."""
    r = slot * _COLS
    if slots_mv[r + _KEPT] == slots_mv[r + _SEQ]:
        return None
    return read_arguments(slots_mv, slot)


def mark_kept(slots_mv: memoryview, slot: int, seq: int, kept: bool) -> None:
    """Worker, before its finish: say whether it kept the arguments of request ``seq`` (the slot
    is RUNNING and its own: nobody else writes the row now; the finish's lock round publishes it)."""
    slots_mv[slot * _COLS + _KEPT] = seq if kept else 0


def write_arguments(inst: "SharedInstance", plan: ArgumentPlan, job: str, args: Any, kwargs: Any) -> "Handle":
    """Client: allocate the plan's bytes, lent to the board, and copy each listed array there
    (its one copy).

    Raises ArgumentTooLarge naming the (largest) argument when the table refuses the allocation
    (the memory limit, no pool with room; the allocator's error is its ``__cause__``)."""
    try:
        handle = inst.table.allocate(plan.nbytes, lent=True)  # no dead-owner sweep frees them
    except ShmPoolError as exc:
        largest = max(plan.arrays, key=lambda spilled: spilled.array.nbytes).array
        raise ArgumentTooLarge(argument=argument_name(args, kwargs, largest), nbytes=plan.nbytes, job=job,
                               reason=str(exc), capacity=_room(inst)) from exc
    try:
        view = inst.handle_view(handle)
        for spilled in plan.arrays:
            array = spilled.array
            place: np.ndarray[Any, Any] = np.ndarray(array.shape, dtype=array.dtype, buffer=view,
                                                     offset=spilled.offset, order=spilled.order)
            np.copyto(place, array, casting="no")
    except BaseException:
        free_arguments(inst, handle)
        raise
    return handle


def _room(inst: "SharedInstance") -> int:
    """Bytes the table could still give (for the error's ``capacity``): the limit minus use."""
    stats = inst.table.stats()
    return max(0, stats.memory_limit - stats.used_bytes)


def argument_name(args: Any, kwargs: Any, target: object) -> str:
    """Which argument holds ``target`` (by identity, looking into lists, tuples and dicts):
    ``args[1]``, ``kwargs['key']``; ``?`` if none does."""
    def holds(value: Any) -> bool:
        if value is target:
            return True
        if isinstance(value, (list, tuple)):
            return any(holds(v) for v in value)
        if isinstance(value, dict):
            return any(holds(v) for v in value.values())
        return False

    for position, value in enumerate(args):
        if holds(value):
            return f"args[{position}]"
    for key, value in kwargs.items():
        if holds(value):
            return f"kwargs[{key!r}]"
    return "?"


def open_arguments(inst: "SharedInstance", ref: ArgumentsRef) -> memoryview:
    """Worker: a view of the spilled arguments ``ref`` names (InvalidHandle once freed)."""
    return inst.handle_view(inst.table.handle_of(*ref))


def free_arguments(inst: "SharedInstance", spilled: "ArgumentsRef | Handle") -> None:
    """Free a request's spilled arguments; already reclaimed (their owner died) is logged, not raised."""
    try:
        handle = inst.table.handle_of(*spilled) if isinstance(spilled, ArgumentsRef) else spilled
        inst.table.free(handle)
    except ShmPoolError as exc:
        logger.debug("spilled arguments {} already freed: {}", spilled, exc)


# The owner of an orphaned job's adopted arguments: no process (is_alive(0) is False). Lent
# blocks of no live owner are freed by the coordinator's settling once no slot names them, and
# only then: the orphan's worker frees them when the job ends, and if it is killed between
# ending the job (its slot freed) and that free, the settling does. They were adopted by the
# coordinator's own pid once; a worker killed in that window left lent blocks of a live owner
# that nothing frees (scripts/chaos.py under load), and a coordinator running in the client's
# process cannot tell adopted blocks from its own client's.
BOARD_OWNER = (0, 0)


def adopt_arguments(inst: "SharedInstance", ref: ArgumentsRef, caller: tuple[int, int]) -> None:
    """Hand an orphaned job's arguments to the board (:data:`BOARD_OWNER`), so that their
    client's exit or close frees nothing under the worker that reads them; gone already is
    logged. ``caller``: the process asking (a client letting go of its own, or the coordinator
    for a dead client). Blocks a live worker took over (:func:`take_over_arguments`) stay that
    worker's: it frees them."""
    try:
        if not inst.table.transfer_unless_taken(inst.table.handle_of(*ref), *BOARD_OWNER, caller=caller):
            logger.debug("spilled arguments {} kept by the worker that ran their job: not adopted", ref)
    except ShmPoolError as exc:
        logger.debug("spilled arguments {} freed before adoption: {}", ref, exc)


def take_over_arguments(inst: "SharedInstance", ref: ArgumentsRef, pid: int, start: int) -> "Handle":
    """Worker (pid, start): own the arguments ``ref`` names, still lent, because its job kept a
    view of them past its return. Raises InvalidHandle if they were freed (they cannot be while
    the slot is RUNNING in this worker's name, or ORPHANED and adopted)."""
    handle = inst.table.handle_of(*ref)
    inst.table.transfer(handle, pid, start)
    return handle


def settle_lent_arguments(inst: "SharedInstance", board: "JobBoard") -> int:
    """Coordinator: free the lent blocks of dead owners that no slot names; returns how many.

    The one place that frees lent blocks of a dead owner (the module docstring says why the
    table's sweep does not). The dead are listed first, the board read after: a dead client
    submits nothing more, so a record no slot names now never will be named. One a slot names
    is left for the job's end to free (or for a later round, once the slot lets go of it).
    Raises LockTimeout if the board's lock is held too long (the next round retries)."""
    dead = inst.table.lent_of_dead()
    if not dead:
        return 0
    named = board.named_arguments()
    return sum(inst.table.reclaim_lent(record, serial) for record, serial in dead
               if ArgumentsRef(record, serial) not in named)
