"""scripts/bench_peers.py --quick runs every comparison, prints complete JSON and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmdb")
pytest.importorskip("psutil")

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_peers.py"
SUMMARY = ("median_us", "p99_us", "n")


def test_bench_peers_quick_compares_every_system_and_cleans_up(tmp_path):
    # cwd is a scratch folder so that a stray save could not land in the repository.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--no-save"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    doc = json.loads(proc.stdout)

    assert doc["benchmark"] == "bench_peers"
    assert {"cpu", "cores", "python"} <= doc["machine"].keys()
    lookup = doc["lookup"]
    for system, rows in (("shmpool", ("single", "batch")), ("manager", ("single",)),
                         ("lmdb", ("single_fresh_txn", "single_long_txn", "batch", "batch_copied_out"))):
        for row in rows:
            assert set(SUMMARY) <= lookup[system][row].keys(), (system, row)
    for system in ("shmpool", "lmdb"):
        conc = doc["concurrency"][system]
        assert conc["1_reader"]["lookups_per_s"] > 0 and conc["8_readers"]["readers"] == 8
        assert set(SUMMARY) <= conc["8_readers"]["latency"].keys()
        assert doc["memory"][system]["readers"] == 3
    # The control: the same rows calling the limit function, and shmpool's ratio judged against it.
    assert doc["concurrency"]["limit"]["8_readers"]["lookups_per_cpu_s"] > 0
    assert doc["concurrency"]["shmpool"]["per_core_ratio_over_limit"] > 0
    assert isinstance(doc["targets"]["readers_per_core_vs_one_against_interpreter"]["met"], bool)
    pub = doc["publish"]["1MiB"]
    for row in ("shmpool_crystallize_fresh_pages", "shmpool_crystallize_warm", "lmdb_write_txn_sync_on",
                "lmdb_write_txn_sync_off", "memcpy_warm", "memcpy_fresh_pages"):
        assert {"median_ms", "p99_ms"} <= pub[row].keys(), row
    assert {"1", "8"} == set(doc["jobs"]["ratios"])
    assert doc["targets"] and all(isinstance(t["met"], bool) for t in doc["targets"].values())
    assert doc["leftovers_in_dev_shm"] == []
    assert not list(tmp_path.iterdir()), "--no-save wrote files"
