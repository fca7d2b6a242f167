"""scripts/bench_peers.py --quick runs every comparison (when the bench extra is installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("lmdb")
pytest.importorskip("psutil")


def test_bench_peers_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_peers.py"), "--quick", "--no-save"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert set(doc["lookup"]) == {"shmpool", "lmdb", "manager"}
    assert doc["memory_pss"]["shmpool"]["readers"] == 3
    assert all(v is not None for v in doc["ratios"].values())
    assert doc["leftovers_in_dev_shm"] == []
