"""scripts/bench_snapshots.py --quick runs, prints complete JSON, and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_snapshots_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_snapshots.py"), "--quick", "--no-save"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert doc["batches"]["load_contexts"]["n"] > 0 and doc["batches"]["ratio_checked_to_unchecked_median_of_rounds"] > 0
    assert doc["snapshot"]["dimensions"] == 14 and doc["snapshot"]["snapshot_and_close"]["n"] > 0
    assert doc["wait_generation"]["crystallize_called_to_waiter_returned"]["n"] == 3
    assert doc["leftovers_in_dev_shm"] == []
