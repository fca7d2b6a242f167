"""scripts/bench_readers.py --quick runs, prints complete JSON, and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_readers_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_readers.py"), "--quick", "--no-save"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert doc["single_lookup"]["n"] == 2000 and doc["single_lookup"]["median_us"] > 0
    assert doc["batch_of_20"]["median_us"] > doc["single_lookup"]["median_us"]
    assert doc["startup_14_dimensions"]["median_ms"] > 0
    assert doc["crystallize"]["1MiB"]["region_bytes"] > 2**20
    assert [r["readers"] for r in doc["concurrent_readers"]["rows"]] == [1, 2]
    assert doc["leftovers_in_dev_shm"] == []
