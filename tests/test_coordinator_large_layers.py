"""A layer that fits the memory limit is placed with the default pools, and the errors that remain
name the setting to change."""

from __future__ import annotations

import pytest

import shmpool
from shmpool import AllocationFailed, LimitExceeded, PoolSpec
from shmpool.coordinator import Coordinator

MiB = 1024 * 1024


def test_a_layer_larger_than_the_280_mib_default_pool_fits_a_larger_memory_limit(instance_name):
    # 300 MiB: more than the 280 blocks of 1 MiB that the default pools had, well within 1 GiB.
    layer = b"\x5a" * (300 * MiB)
    with Coordinator(instance_name, workers=0, memory_limit=1024 * MiB) as coord:
        proto = coord.create_proto_dimension(1, "big")
        proto.add_layer(1, layer)
        del layer
        assert coord.crystallize(1) == 1
        with shmpool.attach(instance_name) as reader:
            ctx = reader.load_layer_context(1, 1)
            assert len(ctx) == 300 * MiB and ctx.content[-1] == 0x5A
            del ctx


def test_the_default_pools_hold_the_whole_memory_limit_in_their_largest_pool(instance_name):
    small = Coordinator(instance_name, workers=0)
    assert small.pools == shmpool.DEFAULT_POOLS  # the 280 MiB default is unchanged
    big = Coordinator(instance_name, workers=0, memory_limit=3000 * MiB)
    assert max(p.nbytes for p in big.pools) >= 3000 * MiB


def test_a_layer_larger_than_every_pool_given_names_the_pools_setting(instance_name):
    pools = (PoolSpec(4096, 1024), PoolSpec(64 * 1024, 64))  # 4 MiB each
    with Coordinator(instance_name, workers=0, pools=pools, memory_limit=64 * MiB) as coord:
        proto = coord.create_proto_dimension(1, "big")
        proto.add_layer(1, b"x" * (5 * MiB))
        with pytest.raises(AllocationFailed) as err:
            coord.crystallize(1)
    assert "pools" in str(err.value) and "PoolSpec" in str(err.value), str(err.value)


def test_a_layer_past_the_memory_limit_names_the_memory_limit_setting(instance_name):
    with Coordinator(instance_name, workers=0, memory_limit=16 * MiB) as coord:
        proto = coord.create_proto_dimension(1, "big")
        proto.add_layer(1, b"x" * (20 * MiB))
        with pytest.raises(LimitExceeded) as err:
            coord.crystallize(1)
    assert "memory_limit" in str(err.value), str(err.value)
