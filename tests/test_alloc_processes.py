"""The allocation table across real processes, including SIGKILL inside the critical section."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import numpy as np
import pytest

import _children
from shmpool.lowlevel import PoolSpec, SharedInstance
from shmpool.errors import LockTimeout
from shmpool.substrate.layout import R, W

KiB, MiB = 1024, 1024 * 1024
POOLS = (PoolSpec(4 * KiB, 1024), PoolSpec(64 * KiB, 128), PoolSpec(1 * MiB, 16))


def _assert_consistent(inst: SharedInstance) -> None:
    """Bitmaps and counters equal what the live records say, and no block is owned twice."""
    ctl = inst.control
    records = ctl.records
    expected = [np.zeros(c, dtype=np.uint8) for c in inst.table.block_counts]
    for rec in np.flatnonzero(records[:, R.STATE] == 1):
        p, first, count = (int(records[rec, c]) for c in (R.POOL, R.FIRST_BLOCK, R.BLOCK_COUNT))
        assert not expected[p][first:first + count].any(), f"record {rec} overlaps another"
        expected[p][first:first + count] = 1
    for p, bits in enumerate(expected):
        actual = np.unpackbits(ctl.bitmaps[p], count=len(bits), bitorder="little")
        assert np.array_equal(actual, bits), f"pool {p} bitmap disagrees with the records"
    used = sum(int(b.sum()) * bs for b, bs in zip(expected, inst.table.block_sizes))
    assert int(ctl.words[W.USED_BYTES]) == used


@pytest.fixture
def inst(instance_name):
    with SharedInstance.create(instance_name, pools=POOLS, memory_limit=64 * MiB) as inst:
        yield inst


def _start(ctx, target, *args):
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_concurrent_processes_never_share_a_block(inst, method):
    ctx = mp.get_context(method)
    results = ctx.Queue()
    procs = [_start(ctx, _children.churn, inst.name, seed, 300, results) for seed in range(1, 5)]
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(10)
    assert all(o[0] == "ok" for o in outcomes), outcomes
    assert all(o[2] == 0 for o in outcomes), f"an allocation was overwritten: {outcomes}"
    _assert_consistent(inst)
    stats = inst.table.stats()
    assert stats.used_bytes == 0 and stats.live_allocations == 0
    assert stats.allocations == stats.frees > 0


def test_sigkill_inside_the_critical_section_does_not_wedge_others(inst):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    keep = inst.table.allocate(8 * KiB)
    victim = _start(ctx, _children.die_inside_allocation, inst.name, 12 * KiB, ready)
    assert ready.wait(30), "child never reached the critical section"
    assert inst.lock.owner() == victim.pid
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    # The dead child's half-made allocation set bits but never committed its record.
    handle = inst.table.allocate(12 * KiB)
    stats = inst.table.stats()
    assert stats.lock_recoveries == 1
    assert stats.live_allocations == 2 and stats.used_bytes == 8 * KiB + 12 * KiB
    _assert_consistent(inst)
    inst.table.free(handle)
    inst.table.free(keep)
    assert inst.lock.owner() == 0


def test_sigkill_after_taking_the_lock_before_recording_the_owner_stalls_nobody(inst):
    # The window between winning the lock and writing one's pid used to cost everyone a 2 s
    # grace period (a semaphore has no owner). The robust mutex's owner is the kernel's to know:
    # the next locker gets it at once (EOWNERDEAD) and runs the repair, which finds nothing.
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    victim = _start(ctx, _children.hold_lock_without_owner, inst.name, ready)
    assert ready.wait(30)
    victim.join(30)
    assert victim.exitcode == -signal.SIGKILL
    assert inst.lock.owner() == 0
    inst.lock.acquire(timeout=0.5)  # LockTimeout here if the dead holder still blocked us
    inst.lock.release()
    handle = inst.table.allocate(100)
    assert inst.table.stats().lock_recoveries == 1  # EOWNERDEAD: repaired, though nothing was half done
    inst.table.free(handle)
    _assert_consistent(inst)


def test_a_stopped_holder_makes_waiters_time_out_naming_it(inst):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    victim = _start(ctx, _children.hold_lock_forever, inst.name, ready)
    assert ready.wait(30)
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        with pytest.raises(LockTimeout) as caught:
            inst.lock.acquire(timeout=0.3)
        assert caught.value.owner_pid == victim.pid and str(victim.pid) in str(caught.value)
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
    inst.lock.acquire(timeout=1)  # and once the holder is gone, the lock is free again
    inst.lock.release()


def test_blocks_of_a_killed_process_are_reclaimed(inst):
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    victim = _start(ctx, _children.allocate_then_wait, inst.name, 5, 64 * KiB, ready)
    assert ready.wait(30)
    assert inst.table.stats().live_allocations == 5
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    assert inst.table.reclaim_dead() == 5
    stats = inst.table.stats()
    assert stats.live_allocations == 0 and stats.used_bytes == 0 and stats.reclaimed == 5
    _assert_consistent(inst)


def test_reclaim_runs_when_space_runs_out(instance_name):
    pools = (PoolSpec(64 * KiB, 8),)
    with SharedInstance.create(instance_name, pools=pools, memory_limit=64 * MiB) as inst:
        ctx = mp.get_context("fork")
        ready = ctx.Event()
        victim = _start(ctx, _children.allocate_then_wait, inst.name, 8, 64 * KiB, ready)
        assert ready.wait(30)
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        # The pool is full of a dead process's blocks: allocate reclaims them instead of failing.
        handle = inst.table.allocate(64 * KiB)
        assert inst.table.stats().reclaimed == 8
        inst.table.free(handle)


def test_stats_are_readable_from_an_attached_process(inst):
    handle = inst.table.allocate(3 * KiB)
    other = SharedInstance.attach(inst.name)
    try:
        stats = other.table.stats()
        assert stats.used_bytes == 4 * KiB and stats.pools[0].blocks_used == 1
        assert stats.memory_limit == 64 * MiB
    finally:
        other.close()
    inst.table.free(handle)
