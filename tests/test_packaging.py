"""What `pip install shmpool` puts into site-packages: one top-level name and everything it needs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_adds_exactly_one_top_level_package_and_carries_both_process_roles(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("shmpool-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"shmpool"}
    for module in ("shmpool/coordinator/coordinator.py", "shmpool/coordinator/pool.py", "shmpool/workers/worker.py",
                   "shmpool/substrate/alloc.py", "shmpool/data/reader.py", "shmpool/jobs/client.py",
                   "shmpool/tools/stress.py"):
        assert module in names, module
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "shmpool = shmpool.coordinator.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
