"""The limit rules, once: thresholds, the capacity state, the refusal point, the typed failure kind."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shmpool import AllocationFailed, LimitExceeded, PoolSpec
from shmpool.lowlevel import SharedInstance
from shmpool.errors import AllocationFailure, SharedMemoryFull
from shmpool.substrate.limits import Budget, CapacityState, Thresholds, per_mille

KiB, MiB = 1024, 1024 * 1024


@given(st.integers(1, 1000), st.integers(1, 1000), st.integers(1, 1000), st.integers(0, 2**40),
       st.integers(1, 2**40))
def test_state_is_the_highest_threshold_reached(a, b, c, used, limit):
    warn, evict, refuse = sorted((a, b, c))
    th = Thresholds(warn, evict, refuse)
    reached = [s for s, pm in ((CapacityState.WARN, warn), (CapacityState.EVICT, evict),
                               (CapacityState.REFUSE, refuse)) if used >= limit * pm // 1000]
    assert th.state(used, limit) == (reached[-1] if reached else CapacityState.OK)
    budget = Budget(used, limit, th)
    assert budget.refuse_at == per_mille(limit, refuse) <= limit
    assert budget.refuses(0) == (used > budget.refuse_at)


def test_state_labels_are_the_words_stats_and_metrics_use():
    assert [s.label for s in CapacityState] == ["ok", "warn", "evict", "refuse"]
    assert Thresholds().state(0, 0) is CapacityState.OK  # an empty pool is not "refusing"


def test_budget_reads_the_instance_words_the_allocator_refuses_by(instance_name):
    th = Thresholds(warn=500, evict=600, refuse=700)
    with SharedInstance.create(instance_name, pools=(PoolSpec(64 * KiB, 16),), memory_limit=MiB,
                               thresholds=th) as inst:
        budget = Budget.read(inst.control.words)
        assert (budget.limit, budget.thresholds, budget.used) == (MiB, th, 0)
        kept = []
        while not Budget.read(inst.control.words).refuses(64 * KiB):
            kept.append(inst.table.allocate(64 * KiB))
        assert Budget.read(inst.control.words).state is CapacityState.EVICT  # 640 KiB of 1 MiB: >= 60%, < 70%
        with pytest.raises(LimitExceeded) as err:
            inst.table.allocate(64 * KiB)
        assert err.value.refuse_at == Budget.read(inst.control.words).refuse_at == MiB * 700 // 1000
        for h in kept:
            inst.table.free(h)


def test_a_request_no_pool_can_hold_says_so_as_a_kind_that_survives_pickling(instance_name):
    with SharedInstance.create(instance_name, pools=(PoolSpec(4 * KiB, 4),), memory_limit=MiB,
                               growth=0) as inst:
        with pytest.raises(AllocationFailed) as err:
            inst.table.allocate(64 * KiB)
        assert err.value.kind is AllocationFailure.TOO_LARGE
        assert pickle.loads(pickle.dumps(err.value)).kind is AllocationFailure.TOO_LARGE
        held = [inst.table.allocate(4 * KiB) for _ in range(4)]
        with pytest.raises(AllocationFailed) as err:
            inst.table.allocate(4 * KiB)
        assert err.value.kind is AllocationFailure.NO_ROOM  # making room would help here
        for h in held:
            inst.table.free(h)


def test_shared_memory_full_is_an_allocation_failure_of_its_own_kind():
    err = SharedMemoryFull(nbytes=10, what="blocks", filesystem="/dev/shm", size=100, free=0)
    assert err.kind is AllocationFailure.SHM_FULL
    assert pickle.loads(pickle.dumps(err)).kind is AllocationFailure.SHM_FULL
