"""A crystallize that can never fit evicts nothing.

docs/architecture.md: "`crystallize` evicts the same way when its allocation is refused ... a
dimension that can never fit is refused without evicting anything". The test for "can never
fit" compared the region's bytes with the refusal point (95% of the limit), but what is
allocated is more: the layer index in front of the region, rounded up to whole blocks. A region
just under the refusal point whose allocation is past it was taken as "may fit once room is
made": every other dimension was evicted (make_room's target, refusal point minus twice the
size, is negative), and then the retry was refused all the same.
"""

from __future__ import annotations

import pytest

from shmpool import LimitExceeded, PoolSpec
from shmpool.coordinator import Coordinator
from shmpool.coordinator.capacity import CapacityPolicy

KiB, MiB = 1024, 1024 * 1024
POOLS = (PoolSpec(64 * KiB, 64),)  # 4 MiB
LIMIT = 4 * MiB
REFUSE_AT = LIMIT * 950 // 1000  # 3,984,588 bytes: 60.8 blocks, so 61 blocks are refused


def test_a_region_under_the_refusal_point_whose_allocation_is_past_it_evicts_nothing(instance_name, tmp_path):
    policy = CapacityPolicy(spill_dir=tmp_path, pool_growth=0)
    with Coordinator(instance_name, workers=0, pools=POOLS, memory_limit=LIMIT, capacity=policy) as coord:
        for dim in (1, 2):
            small = coord.create_proto_dimension(dim, f"small{dim}")
            small.add_layer(1, bytes([dim]) * (100 * KiB))
            coord.crystallize(dim)
        big = coord.create_proto_dimension(3, "big")
        big.add_layer(1, b"b" * (REFUSE_AT - 20 * KiB))  # 60.5 blocks of region, 61 with its index
        assert big.nbytes() <= REFUSE_AT
        with pytest.raises(LimitExceeded):
            coord.crystallize(3)
        assert coord.stats()["capacity"]["evictions"] == 0
        assert sorted(coord.stats()["generations"]) == [1, 2]
