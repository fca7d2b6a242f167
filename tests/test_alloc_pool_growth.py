"""Pool growth: a full pool gains a segment when the limit allows, seen by every process."""

from __future__ import annotations

import multiprocessing as mp

import pytest

import _children as children
from shmpool import AllocationFailed, LimitExceeded
from shmpool.lowlevel import PoolSpec, SharedInstance
from shmpool.substrate.names import list_objects

KiB, MiB = 1024, 1024 * 1024


def test_a_full_pool_grows_and_other_processes_map_the_new_segment(instance_name):
    pools = (PoolSpec(4 * KiB, 8),)
    with SharedInstance.create(instance_name, pools=pools, memory_limit=1 * MiB, growth=2) as owner:
        assert len(list_objects(instance_name)[0]) == 2  # control + the one configured pool
        ctx = mp.get_context("spawn")
        results, hold = ctx.Queue(), ctx.Event()
        child = ctx.Process(target=children.grow_and_fill, args=(instance_name, 4 * KiB, 20, results, hold))
        child.start()
        try:
            coords = results.get(timeout=30)
            assert sorted({c[0] for c in coords}) == [0, 1, 2]  # configured pool, then two growths
            stats = owner.table.stats()
            assert stats.pool_growths == 2 and [p.index for p in stats.pools] == [0, 1, 2]
            assert len(list_objects(instance_name)[0]) == 4
            # This process never mapped pools 1 and 2: the first view maps them.
            assert owner.pool_segments[1] is None
            for i, c in enumerate(coords):
                h = owner.table.handle_at(*c)
                assert bytes(owner.handle_view(h)) == bytes([i % 251]) * c[2]
            # Growth is bounded: 8 + 2 x 8 blocks, 20 taken, 4 left; the 5th refuses cleanly.
            mine = [owner.table.allocate(4 * KiB) for _ in range(4)]
            with pytest.raises(AllocationFailed, match="no pool has a free run"):
                owner.table.allocate(4 * KiB)
            for h in mine:
                owner.table.free(h)
        finally:
            hold.set()
            child.join(30)
        assert child.exitcode == 0
    assert list_objects(instance_name) == ([], [])  # growth segments made by the child unlinked too


def test_growth_stops_at_the_memory_limit_with_limit_exceeded(instance_name):
    pools = (PoolSpec(64 * KiB, 4),)
    # 95% of 512 KiB = 486 KiB: 7 blocks of 64 KiB fit, the 8th would pass the refusal point.
    with SharedInstance.create(instance_name, pools=pools, memory_limit=512 * KiB, growth=4) as inst:
        held = [inst.table.allocate(64 * KiB) for _ in range(7)]
        assert inst.table.stats().pool_growths == 1
        with pytest.raises(LimitExceeded) as err:
            inst.table.allocate(64 * KiB)
        assert err.value.used == 7 * 64 * KiB and err.value.limit == 512 * KiB
        assert inst.table.stats().pool_growths == 1  # refused before creating another segment
        for h in held:
            inst.table.free(h)


def test_growth_zero_keeps_the_pools_fixed(instance_name):
    with SharedInstance.create(instance_name, pools=(PoolSpec(4 * KiB, 2),), memory_limit=MiB, growth=0) as inst:
        held = [inst.table.allocate(100) for _ in range(2)]
        with pytest.raises(AllocationFailed):
            inst.table.allocate(100)
        assert inst.table.stats().pool_growths == 0
        for h in held:
            inst.table.free(h)
