"""scripts/bench_jobs.py --quick runs all three systems, prints complete JSON, leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_jobs_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_jobs.py"), "--quick", "--no-save",
                           "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    for system in ("shmpool_pool", "process_pool_executor", "manager_dict"):
        assert set(doc["results"][system]) == {"1", "8"}
        assert doc["results"][system]["8"]["n"] == 8 * 25 and doc["results"][system]["1"]["jobs_per_s"] > 0
    assert doc["coordinator_job_counts"]["failed"] == 0
    assert doc["leftovers_in_dev_shm"] == []
