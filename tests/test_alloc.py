"""The allocation table within one process: best fit, handles, limits, statistics."""

from __future__ import annotations

import pickle

import pytest
from loguru import logger

from shmpool import AllocationFailed, InvalidHandle, LimitExceeded, PoolSpec, Thresholds
from shmpool.lowlevel import SharedInstance

KiB, MiB = 1024, 1024 * 1024
POOLS = (PoolSpec(4 * KiB, 256), PoolSpec(64 * KiB, 64), PoolSpec(1 * MiB, 8))


@pytest.fixture
def inst(instance_name):
    with SharedInstance.create(instance_name, pools=POOLS, memory_limit=16 * MiB) as inst:
        yield inst


def test_best_fit_picks_least_waste_then_larger_blocks(inst):
    table = inst.table
    small = table.allocate(100)
    assert (small.pool, small.block_count) == (0, 1)
    exact = table.allocate(64 * KiB)  # zero waste in pools 0 and 1: larger blocks win the tie
    assert (exact.pool, exact.block_count) == (1, 1)
    big = table.allocate(1 * MiB + 1)  # 4 KiB blocks waste least
    assert (big.pool, big.block_count) == (0, 257) or big.pool != 0
    for h in (small, exact, big):
        table.free(h)
    assert table.stats().used_bytes == 0


def test_falls_back_to_next_pool_when_best_pool_is_full(inst):
    table = inst.table
    handles = [table.allocate(4 * KiB) for _ in range(256)]
    assert all(h.pool == 0 for h in handles)
    spill = table.allocate(4 * KiB)
    assert spill.pool == 1
    table.free(handles[10])
    assert table.allocate(4 * KiB).first_block == 10


def test_memory_is_writable_and_isolated_per_handle(inst):
    table = inst.table
    a, b = table.allocate(5000), table.allocate(5000)
    inst.handle_view(a)[:] = b"a" * 5000
    inst.handle_view(b)[:] = b"b" * 5000
    assert bytes(inst.handle_view(a)) == b"a" * 5000
    assert bytes(inst.handle_view(b)) == b"b" * 5000


def test_double_free_is_refused_with_the_handle_named(inst):
    h = inst.table.allocate(10)
    inst.table.free(h)
    with pytest.raises(InvalidHandle, match="double free") as err:
        inst.table.free(h)
    assert err.value.handle == h


def test_stale_handle_after_record_reuse_is_refused(inst):
    h = inst.table.allocate(10)
    inst.table.free(h)
    again = inst.table.allocate(10)
    assert again.record == h.record
    with pytest.raises(InvalidHandle):
        inst.table.free(h)
    inst.table.free(again)


def test_foreign_handle_is_refused(inst, make_name):
    with SharedInstance.create(make_name(), pools=POOLS, memory_limit=16 * MiB) as other:
        foreign = other.table.allocate(10)
        with pytest.raises(InvalidHandle, match="another shmpool instance"):
            inst.table.free(foreign)
        other.table.free(foreign)
    with pytest.raises(InvalidHandle, match="not a shmpool allocation handle"):
        inst.table.free((0, 0, 1, 10))


@pytest.mark.parametrize("bad", [0, -5, 1.5, "10", True])
def test_bad_sizes_are_typed_errors(inst, bad):
    with pytest.raises(AllocationFailed) as err:
        inst.table.allocate(bad)
    assert err.value.nbytes == bad


def test_request_larger_than_any_pool_names_the_pools(inst):
    with pytest.raises(AllocationFailed, match="larger than any pool") as err:
        inst.table.allocate(64 * MiB)
    assert any("4096 B blocks" in p for p in err.value.pools)
    assert inst.table.stats().failures == 1


def test_limit_refuses_past_95_percent_with_usage_in_the_error(instance_name):
    with SharedInstance.create(instance_name, pools=POOLS, memory_limit=1 * MiB) as inst:
        kept = [inst.table.allocate(64 * KiB) for _ in range(15)]  # 960 KiB = 93.75%
        with pytest.raises(LimitExceeded) as err:
            inst.table.allocate(64 * KiB)
        e = err.value
        assert (e.used, e.limit, e.requested) == (15 * 64 * KiB, 1 * MiB, 64 * KiB)
        assert e.refuse_at == 1 * MiB * 950 // 1000
        assert str(e.used) in str(e) and str(e.limit) in str(e)
        stats = inst.table.stats()
        assert stats.limit_refusals == 1 and stats.failures == 1
        inst.table.free(kept.pop())
        kept.append(inst.table.allocate(64 * KiB))


def test_warning_at_75_percent_and_eviction_hook_at_85(instance_name):
    messages: list[str] = []
    logger.enable("shmpool")
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    calls: list[tuple[int, int]] = []
    try:
        with SharedInstance.create(instance_name, pools=POOLS, memory_limit=1 * MiB) as inst:
            inst.table.pressure_hook = lambda used, limit: calls.append((used, limit))
            for _ in range(12):  # 768 KiB = 75%: not above the warning threshold yet
                inst.table.allocate(64 * KiB)
            assert not any("warning threshold" in m for m in messages)
            inst.table.allocate(64 * KiB)  # 81%
            assert sum("warning threshold" in m for m in messages) == 1
            assert calls == []
            inst.table.allocate(64 * KiB)  # 87.5%
            assert calls == [(14 * 64 * KiB, 1 * MiB)]
    finally:
        logger.remove(sink)
        logger.disable("shmpool")


def test_stats_report_utilization_and_fragmentation(inst):
    table = inst.table
    hs = [table.allocate(4 * KiB) for _ in range(8)]
    for h in hs[::2]:
        table.free(h)
    pool0 = table.stats().pools[0]
    assert pool0.blocks_used == 4 and pool0.blocks_total == 256
    assert pool0.utilization == pytest.approx(4 / 256)
    # Free: blocks 0, 2, 4, 6 (runs of 1) and 8..255 (run of 248) -> 1 - 248/252.
    assert pool0.fragmentation == pytest.approx(1 - 248 / 252)
    stats = table.stats()
    assert stats.allocations == 8 and stats.frees == 4 and stats.live_allocations == 4
    assert stats.peak_bytes == 8 * 4 * KiB
    assert stats.as_dict()["pools"][0]["utilization"] == pytest.approx(4 / 256)


def test_errors_pickle_with_their_fields():
    err = LimitExceeded(requested=1, used=2, limit=3, refuse_at=2)
    back = pickle.loads(pickle.dumps(err))
    assert (back.requested, back.used, back.limit) == (1, 2, 3) and str(back) == str(err)


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError, match="warn <= evict"):
        Thresholds(warn=900, evict=850)
