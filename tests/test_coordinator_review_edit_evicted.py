"""edit_dimension of an evicted dimension whose reload fails says why.

edit_dimension reloads an evicted dimension first (an edit needs its base in shared memory).
Before, a reload that failed (its file truncated, replaced by another dimension's, or no room)
was only logged, and edit_dimension went on to raise DimensionNotFound ("dimension 7 not found
(available: none)") for a dimension that exists. Now the reload's own typed error propagates
(RegionFormatError naming the file, LimitExceeded naming what was refused).
"""

from __future__ import annotations

import time

import pytest

from shmpool import PoolSpec
from shmpool.coordinator import Coordinator
from shmpool.coordinator.capacity import CapacityPolicy
from shmpool.data.region_builder import RegionBuilder
from shmpool.errors import RegionFormatError

KiB, MiB = 1024, 1024 * 1024
POOLS = (PoolSpec(64 * KiB, 64),)  # 4 MiB
HANG = 30.0  # seconds: only a hang takes this long


def test_edit_of_an_evicted_dimension_whose_file_was_truncated_raises_region_format_error(instance_name,
                                                                                         tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    builder = RegionBuilder(7, "seven")
    for lid in range(1, 36):
        builder.add_layer(lid, bytes([lid]) * (100 * KiB))  # ~3.5 MiB: past the 85% eviction threshold
    path = data / "seven.region"
    builder.write(path)
    policy = CapacityPolicy(spill_dir=tmp_path / "spill", sample_interval=0.02, pool_growth=0)
    with Coordinator(instance_name, data_dir=data, workers=0, pools=POOLS, memory_limit=4 * MiB,
                     mapped_regions=False, capacity=policy) as coord:
        deadline = time.monotonic() + HANG
        while 7 not in coord.stats()["capacity"]["evicted_dimensions"]:
            assert time.monotonic() < deadline, "dimension 7 was never evicted"
            time.sleep(0.01)
        assert coord.stats()["capacity"]["spills_written"] == 0  # evicted to its own file
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
        with pytest.raises(RegionFormatError) as err:
            coord.edit_dimension(7)
        assert str(path) in str(err.value)
