"""The region store is used only on a disk: on tmpfs its copies would be RAM kept after every stop.

Its copies outlive the coordinators on purpose (later starts map them). Where the runtime folder is
in memory ($XDG_RUNTIME_DIR is a tmpfs on most desktops), region files are copied into shared
memory as before, which is freed at stop, and the log says how to get the mapped start.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from loguru import logger

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.coordinator import coordinator as coordinator_module
from shmpool.substrate import mapped_files
from shmpool.substrate.mapped_files import memory_backed


def _kernel_says(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


def test_memory_backed_agrees_with_the_kernels_filesystem_type(tmp_path):
    assert memory_backed(Path("/dev/shm"))
    assert memory_backed(tmp_path) == (_kernel_says(tmp_path) in {"tmpfs", "ramfs"})
    assert memory_backed(tmp_path / "not" / "made" / "yet") == memory_backed(tmp_path)  # the folder may not exist yet


def test_a_runtime_folder_in_memory_copies_region_files_into_pools_and_says_why(make_name, sample_dir, monkeypatch):
    monkeypatch.setattr(coordinator_module, "memory_backed", lambda folder: True)
    coordinator_module._told_memory_backed.clear()
    said: list[str] = []
    logger.enable("shmpool")
    handler = logger.add(lambda m: said.append(m.record["message"]), level="INFO", filter="shmpool")
    try:
        with Coordinator(make_name(), data_dir=sample_dir, workers=0) as coord:
            load = coord.stats()["load"]
            assert load["files_mapped"] == 0 and load["files_stored"] == 0
            with shmpool.attach(coord.name) as reader:
                assert bytes(reader.load_layer_context(3, 17).content)  # served from the pools
    finally:
        logger.remove(handler)
        logger.disable("shmpool")
    assert any("SHMPOOL_RUNTIME_DIR" in line and "tmpfs" in line for line in said), said


def test_a_runtime_folder_on_disk_serves_region_files_from_the_store(make_name, sample_dir):
    if memory_backed(mapped_files.store_dir().parent):
        pytest.skip("this session's runtime folder is on tmpfs: the store is not used there (the test above)")
    with Coordinator(make_name(), data_dir=sample_dir, workers=0) as coord:
        load = coord.stats()["load"]
        assert load["files_mapped"] + load["files_stored"] > 0, load
