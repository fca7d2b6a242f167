"""A result too large for its slot, from its worker to its client: the whole life of a spill.

A slot's response area holds ``payload`` bytes (64 KiB by default). A larger encoded result
*spills*: it goes into blocks of the allocation table and the slot records where (the SPILL_*
columns, see :class:`SpillRef`). Its life, in the order that keeps every crash harmless:

    worker   allocate + copy    the blocks are the worker's: if it dies, the table's dead-owner
                                sweep reclaims them
             stage              JobBoard.stage_spill writes the SpillRef into the slot under the
                                board's lock, so requeue_worker / expire find it if the worker dies
             hand over          AllocationTable.transfer: the blocks become the client's (a dead
                                client's blocks are reclaimed like any dead owner's)
             finish             JobBoard.finish delivers the slot; if nobody will read it (the
                                client left, the job was taken away) the worker frees the blocks
    client   open, decode, free :func:`open_spill`, then :func:`free_spill`
    coordinator                 frees what the board collected as stranded (a worker that died
                                between stage and finish, a dead client's undelivered answer)

No dead-owner sweep can free a spill under its reader, so spills need no lending (unlike spilled
arguments, shmpool/jobs/arg_spill.py): the client reads only a *delivered* slot, and the blocks
became the client's (hand over) before the slot was delivered (finish). A worker dead before the
hand-over leaves its own blocks, which the sweep may free, in a slot nobody reads (the supervisor
requeues the job and frees the staged spill); a worker dead after it leaves the blocks to a live
reader, which the sweep never frees; a client dead before its read reads nothing.

Freeing is always tolerant: the blocks may have been reclaimed already (their owner died), which
is the normal end of a race, not an error. The records here are what crosses the board, named as
concurrent.futures.process names its _CallItem and _ResultItem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from ..substrate._log import logger

from .codec import encode_error
from ..errors import ShmPoolError
from ..substrate import _faults
from .jobs_layout import SLOT_COLS, SlotCol, Status

if TYPE_CHECKING:  # the board imports this module: at run time it is just an argument
    from ..substrate.alloc import Handle
    from ..substrate.instance import SharedInstance
    from .jobboard import JobBoard

__all__ = ["SpillRef", "Response", "NO_SPILL", "read_spill", "write_spill", "send_large", "open_spill",
           "free_spill"]

NO_SPILL = -1  # SlotCol.SPILL_POOL when the response is in the slot's response area
_COLS = SLOT_COLS
_POOL, _FIRST, _LEN, _RECORD, _SERIAL = (int(SlotCol.SPILL_POOL), int(SlotCol.SPILL_FIRST), int(SlotCol.RESP_LEN),
                                         int(SlotCol.SPILL_RECORD), int(SlotCol.SPILL_SERIAL))


class SpillRef(NamedTuple):
    """Where a spilled response lies: an allocation of the table (the slot's SPILL_* columns)."""
    pool: int
    first_block: int
    nbytes: int
    record: int
    serial: int


class Response(NamedTuple):
    """What a finished slot holds for its client (JobBoard.response).

    ``data`` is a view of the slot's response area (release it after decoding), or None when the
    response spilled; ``spill`` is then where it lies."""
    seq: int
    status: int
    data: memoryview | None
    spill: SpillRef | None


def read_spill(slots_mv: memoryview, slot: int) -> SpillRef | None:
    """The spill recorded in ``slot`` (flat int64 view of the slot rows), or None."""
    r = slot * _COLS
    pool = slots_mv[r + _POOL]
    if pool < 0:
        return None
    return SpillRef(pool, slots_mv[r + _FIRST], slots_mv[r + _LEN], slots_mv[r + _RECORD], slots_mv[r + _SERIAL])


def write_spill(slots_mv: memoryview, slot: int, spill: SpillRef | None) -> None:
    """Record ``spill`` in ``slot`` (None: the response is in the slot itself). Board lock held."""
    r = slot * _COLS
    if spill is None:
        slots_mv[r + _POOL] = NO_SPILL
        return
    slots_mv[r + _FIRST], slots_mv[r + _LEN], slots_mv[r + _RECORD], slots_mv[r + _SERIAL] = spill[1:]
    slots_mv[r + _POOL] = spill.pool


def send_large(board: "JobBoard", inst: "SharedInstance", slot: int, seq: int, status: Status, payload: bytes) -> bool:
    """Worker: hand ``payload`` (too large for the slot) to the slot's client in pool blocks.

    Stage, then hand over, then finish (the module docstring says why in that order). If no
    blocks can be had, the client gets that error instead. Returns whether the answer was
    delivered (False: nobody will read it, as JobBoard.finish says)."""
    client = board.client_of(slot)
    try:
        handle = inst.table.allocate(len(payload))
    except ShmPoolError as exc:
        return board.finish(slot, seq, Status.ERROR, encode_error(exc))[0]
    inst.handle_view(handle)[:] = payload
    spill = SpillRef(handle.pool, handle.first_block, handle.nbytes, handle.record, handle.serial)
    if not board.stage_spill(slot, seq, spill):
        free_spill(inst, handle)
        return False
    inst.table.transfer(handle, *client)
    if not board.finish(slot, seq, status, None)[0]:
        free_spill(inst, handle)  # nobody will read it; its client may have been reclaimed first
        return False
    if _faults.ARMED:
        _faults.point("spill.delivered")  # a worker dead now leaves the blocks to the client that reads them
    return True


def open_spill(inst: "SharedInstance", spill: SpillRef) -> tuple["Handle", memoryview]:
    """Client: the handle of a spill handed to us and a view of its bytes (InvalidHandle if stale)."""
    handle = inst.table.handle_at(*spill)
    return handle, inst.handle_view(handle)


def free_spill(inst: "SharedInstance", spill: "SpillRef | Handle") -> None:
    """Free a spill's blocks; one already reclaimed (its owner died first) is logged, not raised."""
    try:
        handle = inst.table.handle_at(*spill) if isinstance(spill, SpillRef) else spill
        inst.table.free(handle)
    except ShmPoolError as exc:
        logger.debug("spilled result {} already reclaimed: {}", spill, exc)
