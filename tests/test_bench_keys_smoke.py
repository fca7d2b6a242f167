"""scripts/bench_keys.py runs (one round: a smoke test, not a measurement), prints every row and
leaves nothing in /dev/shm; its colliding-key row proves the absent key was refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_keys.py"


def test_bench_keys_prints_every_row_and_cleans_up(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--no-save", "--rounds", "1"], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)  # the timeout only catches a hang
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["benchmark"] == "bench_keys" and doc["leftovers_in_dev_shm"] == []
    rows = doc["ns_per_lookup"]
    assert set(rows) == {"id_ns", "hot_key_ns", "distinct_keys_ns", "snapshot_hot_key_ns",
                         "batch_hot_key_per_step_ns", "absent_key_ns", "absent_key_find_ns", "absent_id_find_ns",
                         "absent_id_in_run_find_ns", "dense_absent_id_in_run_find_ns", "absent_colliding_key_ns"}
    assert all(value > 0 for value in rows.values())
