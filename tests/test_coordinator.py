"""Coordinator start-up, loading, ownership, monitoring."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal

import pytest

import _reader_children as children
import shmpool
from shmpool.coordinator import Coordinator
from shmpool import AttachError, InstanceExists, PoolSpec
from shmpool.data.region_builder import RegionBuilder
from shmpool.data.sample import CORE_DIMENSIONS

MiB = 1024 * 1024


def test_sample_is_readable_from_another_process(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=0) as coord:
        assert sorted(coord.load_report.loaded) == sorted(CORE_DIMENSIONS)
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        proc = ctx.Process(target=children.read_all, args=(instance_name, results))
        proc.start()
        status, payload = results.get(timeout=60)
        proc.join(10)
        assert status == "ok", payload
        assert payload["dimensions"] == CORE_DIMENSIONS
        assert payload["layers"] == 14 * 200 and payload["bad"] == 0


def test_the_sample_asked_for_by_name_fits_the_default_limit(instance_name):
    with Coordinator(instance_name, data_dir=shmpool.SAMPLE, workers=0) as coord:
        with shmpool.attach(instance_name) as reader:
            assert reader.dimensions() == CORE_DIMENSIONS
        assert coord.stats()["used_bytes"] < 280 * MiB * 0.75


def test_attach_fails_clearly_without_a_coordinator(instance_name):
    with pytest.raises(AttachError) as err:
        shmpool.attach(instance_name)
    assert err.value.name == instance_name and "does not exist" in str(err.value)
    with Coordinator(instance_name, workers=0):
        shmpool.attach(instance_name).close()
    with pytest.raises(AttachError):
        shmpool.attach(instance_name)


def test_second_coordinator_with_the_same_name_is_refused(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=0):
        with pytest.raises(InstanceExists) as err:
            Coordinator(instance_name, data_dir=sample_dir, workers=0).start()
        assert err.value.owner_pid == os.getpid()


def test_newcomer_takes_over_after_the_coordinator_is_killed(instance_name, sample_dir):
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=children.run_coordinator, args=(instance_name, str(sample_dir), ready, stop))
    proc.start()
    assert ready.wait(60)
    with pytest.raises(InstanceExists):
        Coordinator(instance_name, data_dir=sample_dir, workers=0).start()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    with pytest.raises(AttachError, match="not running"):
        shmpool.attach(instance_name)
    with Coordinator(instance_name, data_dir=sample_dir, workers=0) as coord:
        assert len(coord.load_report.loaded) == 14
        with shmpool.attach(instance_name) as reader:
            assert reader.load_layer_context(1, 1).verify()


def test_corrupt_and_foreign_files_are_skipped_with_a_warning(instance_name, sample_dir, tmp_path, warnings):
    for path in sorted(sample_dir.iterdir())[:3]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    bad = tmp_path / "dim-99-broken.region"
    raw = bytearray((sample_dir / sorted(p.name for p in sample_dir.iterdir())[0]).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    (tmp_path / "dim-98-empty.region").write_bytes(b"")
    with Coordinator(instance_name, data_dir=tmp_path, workers=0) as coord:
        assert sorted(coord.load_report.loaded) == [1, 2, 3]
        skipped = dict(coord.load_report.skipped)
        assert set(skipped) == {str(bad), str(tmp_path / "dim-98-empty.region")}
        assert any(str(bad) in m for m in warnings)
        assert "checksum" in skipped[str(bad)] or "crc" in skipped[str(bad)].lower()


def test_a_dimension_that_does_not_fit_is_rolled_back(instance_name, tmp_path, warnings):
    small = RegionBuilder(1, "small")
    small.add_layer(1, b"x" * 1000)
    small.write(tmp_path / "a.region")
    big = RegionBuilder(2, "big")
    for i in range(1, 40):
        big.add_layer(i, b"y" * 100_000)
    big.write(tmp_path / "b.region")
    pools = (PoolSpec(4096, 1024),)
    # Copied into the pools (a mapped file takes no pool room): the pools' limit is the subject.
    with Coordinator(instance_name, data_dir=tmp_path, pools=pools, memory_limit=2 * MiB, workers=0,
                     mapped_regions=False) as coord:
        assert list(coord.load_report.loaded) == [1]
        stats = coord.stats()
        assert stats["live_allocations"] == 1 and stats["used_bytes"] == 4096
        assert stats["limit_refusals"] == 1
        assert any("b.region" in m for m in warnings)


def test_missing_data_dir_is_a_clear_error(instance_name, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        Coordinator(instance_name, data_dir=tmp_path / "nope", workers=0).start()


def test_stats_and_dump_state_are_json(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=0) as coord:
        reader = shmpool.attach(instance_name)
        reader.load_layer_context(3, 5)
        stats = coord.stats()
        assert stats["dimensions"] == 14 and stats["readers_attached"] == 1
        assert stats["generations"] == {d: 1 for d in CORE_DIMENSIONS}
        assert 0 < stats["pools"][0]["utilization"] <= 1
        state = coord.dump_state()
        text = json.dumps(state)
        assert len(state["dimensions"]) == 14 and state["dimensions"][0]["layers"]["count"] == 200
        assert {r["pid"] for r in state["readers"]} == {os.getpid()}
        assert len(state["allocations"]) == 14
        assert str(sample_dir) in text
        reader.close()


def test_a_full_directory_skips_the_file_and_frees_its_blocks(instance_name, tmp_path, warnings):
    for dim in (1, 2, 3):
        builder = RegionBuilder(dim, f"d{dim}")
        builder.add_layer(1, b"z" * 5000)
        builder.write(tmp_path / f"d{dim}.region")
    with Coordinator(instance_name, data_dir=tmp_path, max_dimensions=2, workers=0) as coord:
        assert sorted(coord.load_report.loaded) == [1, 2]
        assert coord.stats()["live_allocations"] == 2
        assert any("d3.region" in w and "directory is full" in w for w in warnings)
