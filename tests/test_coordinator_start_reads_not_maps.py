"""At start, the coordinator never maps a user's region file, even to word why it skips one: a
file truncated while mapped is a SIGBUS, and the coordinator must never die by a signal. Two
checks still mapped one (noticed by the coordinator review): the duplicate-id check, and the
full validation of a file whose header looks wrong (truncated, another length). Both now read
the file's bytes. Here the region module's mmap is replaced by one that fails the test if it
is ever called: before, this start raised from inside it."""

from __future__ import annotations

import pytest

import shmpool.data.region as region_module
from shmpool.coordinator import Coordinator


class _NoMapping:
    ACCESS_READ = region_module.mmap.ACCESS_READ

    @staticmethod
    def mmap(*args, **kwargs):
        raise AssertionError("a user's region file was mapped at start")


def test_duplicate_and_implausible_files_are_reported_without_mapping_them(
        instance_name, sample_dir, tmp_path, monkeypatch):
    files = sorted(sample_dir.iterdir())[:2]
    for path in files:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    duplicate = tmp_path / "zz-same-dimension-again.region"
    duplicate.write_bytes(files[0].read_bytes())
    truncated = tmp_path / "zz-truncated.region"
    truncated.write_bytes(files[1].read_bytes()[:-100])
    monkeypatch.setattr(region_module, "mmap", _NoMapping)
    with Coordinator(instance_name, data_dir=tmp_path, workers=0, mapped_regions=False) as coord:
        skipped = dict(coord.load_report.skipped)
        assert len(coord.load_report.loaded) == 2
        assert "already loaded" in skipped[str(duplicate)], skipped
        assert "truncated" in skipped[str(truncated)] or "length" in skipped[str(truncated)], skipped


@pytest.mark.parametrize("content", [b"", b"not a region at all"])
def test_an_empty_or_foreign_file_is_still_worded_exactly(instance_name, sample_dir, tmp_path, monkeypatch, content):
    (tmp_path / "odd.region").write_bytes(content)
    first = sorted(sample_dir.iterdir())[0]
    (tmp_path / first.name).write_bytes(first.read_bytes())
    monkeypatch.setattr(region_module, "mmap", _NoMapping)
    with Coordinator(instance_name, data_dir=tmp_path, workers=0, mapped_regions=False) as coord:
        reason = dict(coord.load_report.skipped)[str(tmp_path / "odd.region")]
        assert ("empty" in reason) if not content else ("magic" in reason or "too small" in reason or "short" in reason), reason
