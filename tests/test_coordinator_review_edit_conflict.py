"""An edit refused with EditConflict must not strand its dimension.

The docs say: EditConflict if the dimension was published again since the edit began (nothing
is published; start a new edit). Before, a new edit could not start: the conflicted edit stayed
registered (crystallize_many keeps its protos on failure, by contract, and crystallize did too),
so ``edit_dimension`` of the id raised InvalidLayer ("a proto-dimension with this id already
exists") for ever, and its hold kept the base generation, superseded and pinned by no reader,
from being freed. A conflict is final (generations only grow), so a new ``edit_dimension``
replaces an edit whose base moved on: the old one is ended (EditConflict at every call) and its
hold let go.
"""

from __future__ import annotations

import time

import pytest

from shmpool import PoolSpec
from shmpool.coordinator import Coordinator
from shmpool.data.region_builder import RegionBuilder
from shmpool.errors import EditConflict

HANG = 30.0  # seconds: only a hang takes this long
BASE = b"b" * 200_000  # its own allocation: we watch it be freed


def _publish(coord: Coordinator, dimension_id: int, content: bytes) -> int:
    proto = coord.create_proto_dimension(dimension_id, "dim")
    proto.add_layer(1, content)
    return coord.crystallize(dimension_id)


def _used(coord: Coordinator) -> int:
    return int(coord.stats()["used_bytes"])


@pytest.mark.parametrize("how", ["crystallize", "crystallize_many"])
def test_a_conflicted_edit_frees_its_id_and_its_base_generation(instance_name, tmp_path, how):
    pools = (PoolSpec(4096, 1024),)
    with Coordinator(instance_name, workers=0, pools=pools, memory_limit=4 << 20) as coord:
        _publish(coord, 1, BASE)
        stale = coord.edit_dimension(1)
        stale.add_layer(2, b"late")
        # The dimension is published again meanwhile (here from a region file).
        builder = RegionBuilder(1, "dim")
        builder.add_layer(1, b"newer")
        builder.write(tmp_path / "newer.region")
        assert coord.publish_region_file(tmp_path / "newer.region") == 2
        used_with_base = _used(coord)
        with pytest.raises(EditConflict):
            if how == "crystallize":
                coord.crystallize(1)
            else:
                coord.crystallize_many([1])
        # A new edit can start, as the docs say to.
        edit = coord.edit_dimension(1)
        edit.add_layer(2, b"on time")
        assert coord.crystallize(1) == 3
        assert bytes(coord.load_layer_context(1, 2).content) == b"on time"
        with pytest.raises(EditConflict):  # the ended edit says why, at every later call
            stale.add_layer(3, b"still trying")
        # The base generation (200 kB) is freed: nothing holds it any more.
        deadline = time.monotonic() + HANG
        while _used(coord) > used_with_base - len(BASE) // 2:  # the new edit adds a few 4 KiB blocks
            assert time.monotonic() < deadline, "the conflicted edit's base generation was never freed"
            coord.reclaim()
            time.sleep(0.02)
