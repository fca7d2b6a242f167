"""A data folder of some of the sample's region files, settled so the coordinator may record them.

A file whose ctime is within the validation cache's racy-timestamp margin cannot be recorded (nor
kept in the region store): tests that expect a warm start wait until it is older.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from shmpool.coordinator.verified import RACY_NS


def settle(folder: Path) -> None:
    """Wait until every file's ctime is older than the racy-timestamp margin (so it is recordable)."""
    newest = max(p.stat().st_ctime_ns for p in folder.iterdir())
    while time.time_ns() <= newest + RACY_NS:
        time.sleep(0.01)


def sample_subset(sample_dir: Path, folder: Path, files: int, *, mode: int | None = None) -> Path:
    """The first ``files`` region files of the sample copied into ``folder`` (made), settled."""
    folder.mkdir()
    for path in sorted(sample_dir.iterdir())[:files]:
        shutil.copyfile(path, folder / path.name)
        if mode is not None:
            os.chmod(folder / path.name, mode)
    settle(folder)
    return folder
