"""A small coordinator (two pools, 64 MiB, no workers) over a one-layer seed dimension: the
`coord` fixture of the generation tests. Import it into a test module to use it."""

from __future__ import annotations

import pytest

import _reader_children as children
from shmpool import PoolSpec
from shmpool.coordinator import Coordinator
from shmpool.data.region_builder import RegionBuilder

KiB, MiB = 1024, 1024 * 1024
POOLS = (PoolSpec(4 * KiB, 4096), PoolSpec(64 * KiB, 256))


def small_coordinator(name: str, folder, **kwargs) -> Coordinator:
    """A coordinator of POOLS and 64 MiB serving the region files of ``folder``."""
    return Coordinator(name, data_dir=folder, pools=POOLS, memory_limit=64 * MiB, workers=0, **kwargs)


@pytest.fixture
def coord(instance_name, tmp_path):
    seed = RegionBuilder(1, "seed")
    seed.add_layer(1, "hello")
    seed.write(tmp_path / "seed.region")
    with small_coordinator(instance_name, tmp_path) as c:
        yield c


def fill(proto, generation: int, layers: int = 40, size: int = 3000, *, metadata: bool = False) -> None:
    """Layers 1..``layers`` stamped with ``generation`` (what the hammer children check); with
    ``metadata``, a frequency and keywords naming the generation and the layer too."""
    for lid in range(1, layers + 1):
        extra = {"frequency": lid / 100, "keywords": (f"g{generation}", f"l{lid}")} if metadata else {}
        proto.add_layer(lid, children.stamped_layer(generation, lid, size + lid * 10), **extra)


def allocation_count(coord: Coordinator) -> int:
    """Live allocations: unchanged across a run of publishes iff every superseded generation was
    freed. (used_bytes is not a measure of that: best fit may place the last generation in
    another pool, whose blocks are larger, and its size may differ by a keyword's digits.)"""
    return len(coord.dump_state()["allocations"])
