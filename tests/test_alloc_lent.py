"""Lent allocations (RecordState.LENT) across real processes: no dead-owner sweep frees them.

A job's spilled arguments are allocated lent (shmpool/jobs/arg_spill.py): live and their
client's, but the table cannot see whether a job board still names them, so neither the
periodic sweep, nor the sweep of an allocation that finds no room, nor a lock takeover's
rebuild may free them when their owner dies. ``lent_of_dead`` lists them for the coordinator,
which ``reclaim_lent``s those no slot names.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from typing import Any, Iterator

import numpy as np
import pytest

from shmpool.errors import AllocationFailed
from shmpool.lowlevel import PoolSpec, SharedInstance
from shmpool.substrate._proc import my_identity
from shmpool.substrate.layout import R, W, RecordState

KiB, MiB = 1024, 1024 * 1024
BLOCK = 64 * KiB
POOLS = (PoolSpec(BLOCK, 6),)


def _allocate_then_wait(name: str, lent: int, plain: int, ready: Any) -> None:
    """Child: ``lent`` lent and ``plain`` ordinary one-block allocations, then wait to be killed."""
    inst = SharedInstance.attach(name)
    for _ in range(lent):
        inst.table.allocate(BLOCK, lent=True)
    for _ in range(plain):
        inst.table.allocate(BLOCK)
    ready.set()
    signal.pause()


def _held(inst: SharedInstance) -> list[int]:
    """Records live in either form, LIVE or LENT."""
    states = inst.control.records[:, R.STATE]
    held: list[int] = np.flatnonzero(np.isin(states, (RecordState.LIVE, RecordState.LENT))).tolist()
    return held


def _assert_consistent(inst: SharedInstance) -> None:
    """Bitmaps and the byte count equal what the records (LIVE and LENT) say."""
    records = inst.control.records
    bits = np.zeros(inst.table.block_counts[0], dtype=np.uint8)
    for rec in _held(inst):
        first, count = int(records[rec, R.FIRST_BLOCK]), int(records[rec, R.BLOCK_COUNT])
        assert not bits[first:first + count].any()
        bits[first:first + count] = 1
    actual = np.unpackbits(inst.control.bitmaps[0], count=len(bits), bitorder="little")
    assert np.array_equal(actual, bits)
    assert int(inst.control.words[W.USED_BYTES]) == int(bits.sum()) * BLOCK


@pytest.fixture
def inst(instance_name: str) -> Iterator[SharedInstance]:
    with SharedInstance.create(instance_name, pools=POOLS, memory_limit=64 * MiB) as inst:
        yield inst


def _killed_owner(inst: SharedInstance, lent: int, plain: int) -> int:
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    victim = ctx.Process(target=_allocate_then_wait, args=(inst.name, lent, plain, ready), daemon=True)
    victim.start()
    assert ready.wait(30)
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    return victim.pid


def test_the_sweep_frees_a_dead_owners_plain_blocks_and_leaves_its_lent_ones(inst: SharedInstance) -> None:
    _killed_owner(inst, lent=3, plain=2)
    assert inst.table.reclaim_dead() == 2
    assert inst.table.reclaim_dead() == 0  # and not on a second look either
    assert inst.table.stats().live_allocations == 3
    dead = inst.table.lent_of_dead()
    assert sorted(rec for rec, _serial in dead) == _held(inst)
    for record, serial in dead:  # still whole handles, until the coordinator reclaims them
        inst.table.handle_of(record, serial)
    assert not inst.table.reclaim_lent(dead[0][0], dead[0][1] + 1)  # another serial: not that allocation
    assert [inst.table.reclaim_lent(record, serial) for record, serial in dead] == [True] * 3
    assert not inst.table.reclaim_lent(*dead[0])  # once
    stats = inst.table.stats()
    assert stats.live_allocations == 0 and stats.reclaimed == 5
    _assert_consistent(inst)


def test_an_allocation_that_finds_no_room_does_not_take_lent_blocks_of_the_dead(instance_name: str) -> None:
    with SharedInstance.create(instance_name, pools=POOLS, memory_limit=64 * MiB) as inst:
        _killed_owner(inst, lent=6, plain=0)  # the whole pool, lent, its owner dead
        try:
            handle = inst.table.allocate(BLOCK)  # sweeps the dead first: none of theirs is free to take
        except AllocationFailed:
            handle = None
        lent = inst.table.lent_of_dead()
        assert len(lent) == 6 and inst.table.stats().reclaimed == 0
        if handle is not None:  # a growth segment, not the lent blocks
            assert (handle.pool, handle.first_block) not in {
                (int(inst.control.records[r, R.POOL]), int(inst.control.records[r, R.FIRST_BLOCK])) for r, _ in lent}
            inst.table.free(handle)
        for record, serial in lent:
            inst.table.free(inst.table.handle_of(record, serial))


def test_a_takeovers_rebuild_keeps_lent_records_and_their_bits(inst: SharedInstance) -> None:
    _killed_owner(inst, lent=2, plain=1)
    with inst.table._lock:  # what the next holder runs after taking the lock from a dead one
        inst.table._after_takeover(0)
    assert inst.table.stats().live_allocations == 2
    _assert_consistent(inst)
    dead = inst.table.lent_of_dead()
    record, serial = dead[0]
    adopted = inst.table.handle_of(record, serial)
    inst.table.transfer(adopted, *my_identity())  # adopted (the coordinator does): alive, still lent
    assert int(inst.control.records[record, R.STATE]) == RecordState.LENT
    assert inst.table.reclaim_dead() == 0 and inst.table.lent_of_dead() == dead[1:]
    assert not inst.table.reclaim_lent(record, serial)  # its owner lives
    inst.table.free(adopted)
    for record, serial in inst.table.lent_of_dead():
        inst.table.free(inst.table.handle_of(record, serial))
    assert inst.table.stats().live_allocations == 0
    _assert_consistent(inst)
