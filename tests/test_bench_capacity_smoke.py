"""scripts/bench_capacity.py --quick runs, prints complete JSON, and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_capacity_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_capacity.py"), "--quick", "--no-save"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    comp = doc["compression"]
    assert comp["compressed"]["region_bytes"] < comp["uncompressed"]["region_bytes"]
    assert comp["ratio"] > 1 and comp["lookup_compressed"]["n"] > 0
    assert doc["eviction_reload"]["first_lookup_of_evicted_dimension"]["n"] == 2
    assert doc["leftovers_in_dev_shm"] == []
