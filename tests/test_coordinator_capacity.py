"""Capacity management with the real allocator and real reader processes: LRU eviction at 85%,
reload on access, spill of crystallized dimensions, cold compression, refusal at 95%."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import time
import zlib
from pathlib import Path

import pytest

import _reader_children as children
import _introspect as peek
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.coordinator.capacity import CapacityPolicy
from shmpool import LimitExceeded, PoolSpec
from shmpool.data.region_builder import RegionBuilder
from shmpool.data.sample import sample_builders
from shmpool.substrate.names import runtime_dir

KiB, MiB = 1024, 1024 * 1024
POOLS = (PoolSpec(64 * KiB, 64),)  # 4 MiB
LIMIT = 4 * MiB


def _layer(dim: int, lid: int) -> bytes:
    return bytes([dim]) * 100 + lid.to_bytes(4, "little") * (50 * KiB // 4)


def _write_dimension(folder, dim: int, layers: int = 16) -> None:
    b = RegionBuilder(dim, f"dim{dim}")
    for lid in range(1, layers + 1):
        b.add_layer(lid, _layer(dim, lid), keywords=[f"k{lid % 3}"])
    b.write(folder / f"d{dim}.region")


def _wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _in_child(target, *args):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, results))
    proc.start()
    status, payload = results.get(timeout=60)
    proc.join(30)
    assert status == "ok", payload
    return payload


def _policy(**kw) -> CapacityPolicy:
    return CapacityPolicy(sample_interval=0.02, pool_growth=0, **kw)


def test_lru_eviction_at_85_percent_and_reload_in_another_process(instance_name, tmp_path):
    for dim in (1, 2, 3):
        _write_dimension(tmp_path, dim)  # ~0.8 MiB each: 60% of the limit
    with Coordinator(instance_name, data_dir=tmp_path, pools=POOLS, memory_limit=LIMIT, workers=0, mapped_regions=False,
                     capacity=_policy()) as coord:
        with shmpool.attach(instance_name) as reader:
            time.sleep(0.05)
            for dim in (2, 3):  # dimension 1 stays cold
                reader.load_layer_context(dim, 1)
            time.sleep(0.1)  # sampled as recent
            proto = coord.create_proto_dimension(4, "new")
            for lid in range(1, 21):
                proto.add_layer(lid, _layer(4, lid))
            coord.crystallize(4)  # ~1 MiB more: past 85%
            _wait_for(lambda: coord.stats()["capacity"]["evictions"] >= 1)
            cap = coord.stats()["capacity"]
            assert cap["evicted_dimensions"] == [1]
            _wait_for(lambda: coord.stats()["used_bytes"] <= LIMIT * 0.70)
            assert cap["spills_written"] == 0  # dimension 1 came from a file that still matches
        got = _in_child(children.read_layers, instance_name, 1, [1, 7, 16])
        assert [(lid, crc) for lid, crc, _ in got["layers"]] == [(lid, zlib.crc32(_layer(1, lid))) for lid in (1, 7, 16)]
        assert all(ok for *_, ok in got["layers"])
        stats = coord.stats()["capacity"]
        assert stats["reloads"] == 1 and got["generation"] == 3  # 1 loaded, 2 evicted, 3 reloaded
        assert 1 not in stats["evicted_dimensions"]


def test_a_crystallized_dimension_is_written_out_before_eviction(instance_name, tmp_path):
    spill = tmp_path / "spill"
    with Coordinator(instance_name, data_dir=tmp_path, pools=POOLS, memory_limit=LIMIT, workers=0, mapped_regions=False,
                     capacity=_policy(spill_dir=spill)) as coord:
        for dim in (1, 2, 3):
            proto = coord.create_proto_dimension(dim, f"c{dim}")
            for lid in range(1, 17):
                proto.add_layer(lid, _layer(dim, lid))
            coord.crystallize(dim)
            time.sleep(0.05)  # so the dimensions are first seen at different times
        reader = coord.reader()
        reader.load_layer_context(2, 1)
        reader.load_layer_context(3, 1)
        time.sleep(0.1)
        proto = coord.create_proto_dimension(4, "c4")
        for lid in range(1, 21):
            proto.add_layer(lid, _layer(4, lid))
        coord.crystallize(4)
        _wait_for(lambda: coord.stats()["capacity"]["evictions"] >= 1)
        cap = coord.stats()["capacity"]
        assert cap["evicted_dimensions"] == [1] and cap["spills_written"] == 1
        files = list(spill.glob(f"{instance_name}.dim-00001-gen*.region"))
        assert len(files) == 1
        got = _in_child(children.read_layers, instance_name, 1, [3, 16])
        assert [crc for _, crc, _ in got["layers"]] == [zlib.crc32(_layer(1, 3)), zlib.crc32(_layer(1, 16))]


def test_crystallize_makes_room_by_evicting_and_refuses_what_can_never_fit(instance_name, tmp_path):
    for dim in (1, 2, 3, 4):
        _write_dimension(tmp_path, dim, layers=14)  # 4 x ~0.7 MiB: 70%, no eviction yet
    with Coordinator(instance_name, data_dir=tmp_path, pools=POOLS, memory_limit=LIMIT, workers=0, mapped_regions=False,
                     capacity=_policy()) as coord:
        assert coord.stats()["capacity"]["evictions"] == 0
        proto = coord.create_proto_dimension(5, "big")
        for lid in range(1, 30):
            proto.add_layer(lid, _layer(5, lid))  # ~1.45 MiB: would pass 95%
        assert coord.crystallize(5, keep=True) == 1
        assert coord.stats()["capacity"]["evictions"] >= 1
        huge = coord.create_proto_dimension(6, "huge")
        for lid in range(1, 80):
            huge.add_layer(lid, _layer(6, lid))  # ~4 MiB: more than 95% of the limit on its own
        evictions = coord.stats()["capacity"]["evictions"]
        with pytest.raises(LimitExceeded) as err:
            coord.crystallize(6)
        assert err.value.limit == LIMIT
        assert coord.stats()["capacity"]["evictions"] == evictions  # hopeless: nothing evicted for it


def test_cold_dimensions_are_compressed_and_expanded_when_hot_again(instance_name, tmp_path):
    for builder in sample_builders(layers_per_dimension=60):
        if builder.dimension_id in (1, 2):
            builder.write(tmp_path / f"{builder.dimension_id}.region")
    policy = CapacityPolicy(compress_cold=True, cold_after=0.1, sample_interval=0.02, rehydrate_after=3)
    with Coordinator(instance_name, data_dir=tmp_path, workers=0, mapped_regions=False, capacity=policy) as coord:
        before = coord.stats()["used_bytes"]
        with shmpool.attach(instance_name) as reader:
            originals = {(d, c.layer_id): zlib.crc32(c.content) for d in (1, 2) for c in reader.scan(d)}
        _wait_for(lambda: coord.stats()["capacity"]["compressions"] == 2)
        _wait_for(lambda: coord.stats()["superseded_pending"] == 0)
        after = coord.stats()["used_bytes"]
        assert after < before * 0.8, (before, after)
        assert coord.stats()["capacity"]["compressed_dimensions"] == [1, 2]
        # Another process reads compressed layers: decompressed copies with the original bytes.
        ids = sorted(lid for d, lid in originals if d == 1)
        got = _in_child(children.read_layers, instance_name, 1, ids)
        assert all(ok for *_, ok in got["layers"])
        assert {lid: crc for lid, crc, _ in got["layers"]} == {lid: originals[(1, lid)] for lid in ids}
        # Read in several sampling periods: hot again, so expanded back.
        with shmpool.attach(instance_name) as reader:
            deadline = time.monotonic() + 10
            while 1 in coord.stats()["capacity"]["compressed_dimensions"]:
                assert time.monotonic() < deadline, "dimension 1 never expanded"
                reader.load_layer_context(1, ids[0])
                time.sleep(0.01)
            ctx = reader.load_layer_context(1, ids[0])
            assert ctx.verify() and not isinstance(ctx.content.obj, bytes)  # a view again, not a copy
        _wait_for(lambda: coord.stats()["capacity"]["rehydrations"] >= 1)  # counted just after publishing


# ----------------------------------------------------------------------------- spill leftovers

def _spill_leftovers(folder: Path, name: str) -> dict[str, Path]:
    """Files as a crashed run of ``name`` leaves them, and files that are not ours."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "spill": folder / f"{name}.dim-00007-gen3.region",
        "temp": folder / f".{name}.dim-00007-gen4.region.k2j3h4.tmp",
        "other_instance": folder / "someone-else.dim-00007-gen3.region",
        "user": folder / "notes.txt",
        "user_region": folder / "dim-00007-gen3.region",
    }
    for path in files.values():
        path.write_bytes(b"left over")
    return files


@pytest.mark.parametrize("where", ["explicit", "default"])
def test_spill_files_of_a_previous_run_are_removed_at_start_and_only_those(instance_name, sample_dir, tmp_path,
                                                                           where):
    folder = tmp_path / "spill" if where == "explicit" else runtime_dir() / f"{instance_name}.spill"
    policy = CapacityPolicy(spill_dir=folder) if where == "explicit" else CapacityPolicy()
    files = _spill_leftovers(folder, instance_name)
    try:
        with Coordinator(instance_name, data_dir=sample_dir, workers=0, mapped_regions=False, capacity=policy) as coord:
            assert peek.spill_dir(coord) == folder
            assert not files["spill"].exists() and not files["temp"].exists()
            kept = [files[k] for k in ("other_instance", "user", "user_region")]
            assert all(p.read_bytes() == b"left over" for p in kept)
            # A spill of this run is gone after a clean stop too: nothing can reload it then.
            files["spill"].write_bytes(b"spilled while running")
        assert not files["spill"].exists()
        assert all(p.exists() for p in kept)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
