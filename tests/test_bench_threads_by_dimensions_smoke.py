"""scripts/bench_threads_by_dimensions.py runs every key set, prints complete JSON and leaves
nothing behind (a smoke test: tiny windows, no figure judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_threads_by_dimensions.py"


def test_bench_threads_by_dimensions_runs_every_key_set_and_cleans_up(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--no-save", "--threads", "2", "--seconds", "0.05",
                           "--rounds", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path)  # a hang only
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert doc["benchmark"] == "bench_threads_by_dimensions" and doc["leftovers_in_dev_shm"] == []
    rows = {row["keys"]: row for row in doc["rows"]}
    assert rows["14 dimensions, all layers"]["distinct_keys"] == 2800
    assert rows["14 dimensions, 2 layers each"]["dimensions"] == 14 and rows["2 dimensions, all layers"]["dimensions"] == 2
    assert all(row["one_thread_per_cpu_s"] > 0 and row["2_threads_per_cpu_s"] > 0 and row["ratio"] > 0
               for row in rows.values())
