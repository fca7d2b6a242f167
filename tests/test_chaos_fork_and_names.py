"""The fork and removed-names campaigns of scripts/chaos.py, in short form (issue 24).

``fork``: processes holding a Reader, a context and a Client fork children under a publish loop
that reclaims generations every 10 ms, the parent staying alive in one mode and exiting in the
other; no child may read a wrong byte, get a wrong result or an untyped error, and no parent may
notice its children. ``names``: a serving ``shmpool serve`` has its /dev/shm names deleted (all,
then only the semaphores), as systemd-logind's RemoveIPC=yes does; it must stop within seconds,
say why, and leave nothing. The script is the harness and its checks the verdict; this test holds
it to them and to the figures behind them, so a campaign that quietly did less fails too.
About 8 s each here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent


def _run(name: str, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--no-save", "--name", name, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.stdout, f"chaos.py printed nothing (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert proc.returncode == (0 if doc["ok"] else 1), proc.stderr[-4000:]
    return doc


def test_children_forked_from_readers_and_clients_never_see_a_wrong_byte_and_leave_the_parent_alone(make_name: Callable[[], str]) -> None:
    doc = _run(make_name(), "--campaign", "fork", "--fork-seconds", "3", "--fork-holders", "1",
               "--fork-children", "2")
    fork = doc["fork"]
    summary = {m: {"child": fork[m]["child"], "holder": fork[m]["holder"]} for m in ("alive", "exit") if m in fork}
    assert doc["ok"], (doc["failed_checks"], json.dumps(summary)[:4000])
    assert fork["generations_published"] > 50  # the publish loop reclaimed generations throughout
    for mode in ("alive", "exit"):
        child = fork[mode]["child"]
        assert fork[mode]["children_reported"] == 2
        assert child["reads"] + sum(child["typed_errors"].values()) > 0  # read on, or refused (typed)
        assert child["wrong_bytes"] == 0 and child["wrong_results"] == 0 and not child["untyped_errors"]
    assert fork["alive"]["holder"]["jobs_ok"] > 0 and fork["alive"]["holder"]["wrong_bytes"] == 0
    assert fork["leftovers_in_dev_shm"] == []


def test_an_instance_whose_names_are_removed_stops_within_seconds_and_leaves_nothing(make_name: Callable[[], str]) -> None:
    doc = _run(make_name(), "--campaign", "names")
    names = doc["names"]
    assert doc["ok"], (doc["failed_checks"], json.dumps(names)[:4000])
    for which in ("all", "semaphores"):
        r = names["rounds"][which]
        assert r["names_removed"] >= (5 if which == "all" else 1)  # 5 segments and the wake semaphore
        assert r["exit_code"] == 1 and r["stop_seconds"] <= 30  # only catches a hang (tests/README.md)
        assert "RemoveIPC" in r["error_line"] and r["worker_restart_failures"] == 0
        assert r["jobs"]["ok"] > 0 and r["jobs"]["ended_typed"] and not r["jobs"]["hung"]
        assert r["leftovers_in_dev_shm"] == []
