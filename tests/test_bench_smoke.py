"""The allocation benchmark runs end to end, prints its JSON, and leaves nothing in /dev/shm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_alloc.py"
SIZES = ("100B", "4KiB", "64KiB", "1MiB")
SUMMARY = ("median_us", "p99_us", "p999_us", "min_us", "mean_us", "n")


def test_bench_alloc_quick_prints_complete_json_and_cleans_up(tmp_path):
    # cwd is a scratch folder so that a stray save could not land in the repository.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--no-save"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    doc = json.loads(proc.stdout)

    assert doc["benchmark"] == "bench_alloc"
    assert {"cpu", "cores", "python", "numpy", "platform", "date"} <= doc["machine"].keys()
    for section in ("round_trip", "round_trip_occupied"):
        for size in SIZES:
            result = doc[section][size]
            for op in ("allocate_free", "allocate"):
                assert set(SUMMARY) <= result[op].keys()
                assert result[op]["n"] == doc["config"]["iterations"]
            assert isinstance(result["target_met"], bool)
    assert 0.2 < doc["round_trip_occupied"]["occupancy"]["pools"][0]["utilization"] < 0.4
    contended = doc["contended"]
    assert len(contended["per_process"]) == contended["processes"] == 2
    assert contended["lock_recoveries"] == 0
    region = doc["region_open"]
    assert region["files"] == 14
    assert {"median_ms", "p99_ms"} <= region["all_files"].keys()
    assert region["all_files"]["n"] == doc["config"]["region_repeats"]
    assert isinstance(region["target_met"], bool)
    assert set(doc["target_met"]) == {"round_trip_p99_lt_100us", "round_trip_occupied_p99_lt_100us",
                                      "contended_p99_lt_100us", "region_open_14_lt_100ms"}
    assert doc["leftover_shm_objects"] == []
    assert not list(tmp_path.iterdir()), "--no-save wrote files"
