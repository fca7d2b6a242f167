"""A dimension evicted to its region file never comes back with other bytes.

docs/architecture.md: "A dimension is evicted only if it can come back byte for byte: its region
file still holds exactly its bytes". That was checked at the eviction only: a file replaced
(a new version written with os.replace, as RegionBuilder.write does) or rewritten afterwards was
reloaded all the same, verified, and served as a newer generation the program never published.
Now the eviction records the file's identity (device, inode, size, mtime, ctime) and a reload
from a file that changed since is refused (RegionFormatError naming the file).
"""

from __future__ import annotations

import time
import zlib

import pytest

from shmpool import PoolSpec
from shmpool.coordinator import Coordinator
from shmpool.coordinator.capacity import CapacityPolicy
from shmpool.data.region_builder import RegionBuilder
from shmpool.errors import RegionFormatError

KiB, MiB = 1024, 1024 * 1024
POOLS = (PoolSpec(64 * KiB, 64),)  # 4 MiB
HANG = 30.0  # seconds: only a hang takes this long


def _write(path, fill: int) -> None:
    builder = RegionBuilder(7, "seven")
    for lid in range(1, 36):
        builder.add_layer(lid, bytes([fill]) * (100 * KiB))  # ~3.5 MiB: past the 85% eviction threshold
    builder.write(path)


@pytest.mark.parametrize("how", ["replaced", "rewritten"])
def test_a_file_changed_after_its_dimension_was_evicted_is_not_reloaded(instance_name, tmp_path, how):
    data = tmp_path / "data"
    data.mkdir()
    path = data / "seven.region"
    _write(path, 1)
    policy = CapacityPolicy(spill_dir=tmp_path / "spill", sample_interval=0.02, pool_growth=0)
    with Coordinator(instance_name, data_dir=data, workers=0, pools=POOLS, memory_limit=4 * MiB,
                     mapped_regions=False, capacity=policy) as coord:
        deadline = time.monotonic() + HANG
        while 7 not in coord.stats()["capacity"]["evicted_dimensions"]:
            assert time.monotonic() < deadline, "dimension 7 was never evicted"
            time.sleep(0.01)
        assert coord.stats()["capacity"]["spills_written"] == 0  # evicted to its own file
        while coord.stats()["superseded_pending"]:  # its blocks freed: room for a reload
            assert time.monotonic() < deadline, "the evicted generation was never freed"
            time.sleep(0.01)
        if how == "replaced":
            _write(path, 2)  # a new version, os.replace'd over it
        else:
            _write(tmp_path / "new.region", 2)
            path.write_bytes((tmp_path / "new.region").read_bytes())  # in place, as cp does
        with pytest.raises(RegionFormatError) as err:
            coord.edit_dimension(7)  # reloads first
        assert str(path) in str(err.value)
        assert coord.stats()["capacity"]["evicted_dimensions"] == [7]  # the new bytes were not served


def test_an_unchanged_file_is_still_reloaded(instance_name, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "seven.region", 1)
    policy = CapacityPolicy(spill_dir=tmp_path / "spill", sample_interval=0.02, pool_growth=0)
    with Coordinator(instance_name, data_dir=data, workers=0, pools=POOLS, memory_limit=4 * MiB,
                     mapped_regions=False, capacity=policy) as coord:
        deadline = time.monotonic() + HANG
        while 7 not in coord.stats()["capacity"]["evicted_dimensions"]:
            assert time.monotonic() < deadline, "dimension 7 was never evicted"
            time.sleep(0.01)
        while coord.stats()["superseded_pending"]:  # its blocks freed: room for the reload
            assert time.monotonic() < deadline, "the evicted generation was never freed"
            time.sleep(0.01)
        edit = coord.edit_dimension(7)
        assert zlib.crc32(edit.load_layer_context(1).content) == zlib.crc32(bytes([1]) * (100 * KiB))
