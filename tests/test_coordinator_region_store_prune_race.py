"""Two coordinators starting at once over one region store: one prunes while the other copies
a file in. The copier made its temporary (mkstemp) and only then locked it, so a prune landing
between the two took the lock, removed the temporary as a killed copy's, and the copier's link
failed: `shmpool serve` exited 1 with "No such file or directory: .tmp-... -> ..." (seen once in
a fresh clone's .ci/run, tests/test_cli_ops.py, two serves starting together). The temporary is
now made and locked under the store's prune lock. Here the prune runs exactly in that window."""

from __future__ import annotations

import tempfile
import threading

import pytest

from _region_data import sample_subset
from shmpool.coordinator import region_store as store_module
from shmpool.coordinator.file_copy import RegionFile
from shmpool.coordinator.region_store import RegionStore
from shmpool.coordinator.verified import FileKey
from shmpool.data.region import Region


def _check(view: memoryview) -> None:
    with Region.from_buffer(view, source="copy", verify_checksums=True):
        pass


@pytest.fixture
def data(sample_dir, tmp_path):
    return sample_subset(sample_dir, tmp_path / "data", 1)


def test_a_prune_between_a_temporary_made_and_locked_leaves_it_alone(data, tmp_path, monkeypatch):
    folder = tmp_path / "store"
    store, pruner = RegionStore(folder), RegionStore(folder)  # two coordinators' stores, one folder
    real_mkstemp = tempfile.mkstemp

    def mkstemp_then_prune(*args, **kwargs):
        made = real_mkstemp(*args, **kwargs)
        # Another coordinator's prune, from another thread (its own lock file handle), right now.
        other = threading.Thread(target=pruner.prune)
        other.start()
        other.join(30)  # 30 s: only catches a hang
        return made

    monkeypatch.setattr(store_module.tempfile, "mkstemp", mkstemp_then_prune)
    (source,) = sorted(data.iterdir())
    with RegionFile.open(source) as src:
        stored = store.add(src, FileKey.of(src.stat, src.header.meta_crc), _check)
    assert stored is not None, "the copy was not stored"
    stored.close()
