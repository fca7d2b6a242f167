"""The chaos campaigns of scripts/chaos.py, run whole: the job board survives random SIGKILLs.

The kill campaign runs as issue 11 states it, at a quarter of its counts (15 victim clients
SIGKILLed with jobs in flight, 15 workers SIGKILLed mid-job, an 8-slot board, live clients checking
every answer), then a short soak (crystallize every 0.2 s, a worker killed 2 s in, 4 s long). The
script is the harness; this test holds it to its verdict and to the figures behind it, so a
campaign that quietly did less (no kills, no jobs, no slot caught queued or running) fails too.
A quarter of the kills: the campaign's time is worker restarts and the live clients' load under
the kills (67 s for 60 + 60 at load 9 on the 2-core machine, 35 s quiet; 39 s for 30 + 30 at load
17), and each kill is the same scenario again: 60 victims held 132 slots SUBMITTED, 64 RUNNING and
1 DONE at their kill, 54 of 60 worker kills requeued a job (docs/results/chaos.json), so 15 of each
still interrupt queued and running slots and requeue jobs, which the test asserts.
``scripts/chaos.py`` runs the full 60 + 60 and a 60 s soak (docs/results/chaos.json). The fork and
removed-names campaigns have their own test (test_chaos_fork_and_names.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT_KILLS = WORKER_KILLS = 15
SLOTS = 8
SOAK_SECONDS = 4
SOAK_KILL_EVERY = 2  # one worker kill in the soak, at 2 s (chaos.py expects ceil(4 / 2) - 1)


def _run_chaos(name: str) -> dict:
    cmd = [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--no-save", "--name", name, "--campaign", "kills,soak",
           "--client-kills", str(CLIENT_KILLS), "--worker-kills", str(WORKER_KILLS), "--slots", str(SLOTS),
           "--soak-seconds", str(SOAK_SECONDS), "--kill-every", str(SOAK_KILL_EVERY)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.stdout, f"chaos.py printed nothing (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    doc = json.loads(proc.stdout)
    assert proc.returncode == (0 if doc["ok"] else 1), proc.stderr[-4000:]
    return doc


def _assert_board_whole(campaign: dict) -> None:
    fresh, board = campaign["fresh_client"], campaign["board"]
    assert fresh["slots_in_flight"] == SLOTS and fresh["all_in_flight_at_once"] and fresh["results_ok"], fresh
    c = board["counts"]
    assert c["submitted"] == c["completed"] + c["failed"] + c["cancelled"], c
    assert board["free_slots"] == SLOTS and board["slot_states"] == {"FREE": SLOTS}, board
    assert board["free_stack_whole"] and board["free_waiters"] == 0, board
    assert campaign["leftovers_in_dev_shm"] == []


def _assert_clients_whole(live: dict) -> None:
    assert live["futures"] > 0 and live["futures"] == live["completed"], live
    assert live["lost"] == 0 and live["submit_timeouts"] == 0, live
    assert live["torn"] == 0 and live["wrong"] == 0 and live["regressions"] == 0, live
    # A job that killed two workers fails with WorkerCrashed by design; nothing else may fail.
    assert set(live["failures"]) <= {"WorkerCrashed"}, live["failures"]


def test_job_board_survives_random_kills_of_clients_and_workers_and_a_soak(make_name):
    name = make_name()  # the fixture fails the test if anything of it is left in /dev/shm
    doc = _run_chaos(name)
    assert doc["ok"], doc["failed_checks"]
    assert doc["machine"]["cores"] and doc["machine"]["python"]

    kills = doc["kills"]
    assert kills["client_kills"]["done"] == CLIENT_KILLS
    assert kills["client_kills"]["died_by_sigkill"] == CLIENT_KILLS
    assert kills["client_kills"]["with_jobs_in_flight"] == CLIENT_KILLS
    # The victims were caught with slots queued and slots running (the windows the sweep must heal).
    assert {"SUBMITTED", "RUNNING"} <= kills["client_kills"]["slot_states_at_kill"].keys(), kills["client_kills"]
    assert kills["worker_kills"]["done"] == WORKER_KILLS
    assert kills["worker_kills"]["deaths"]["seen"] == WORKER_KILLS
    assert kills["worker_kills"]["deaths"]["requeued"] > 0  # the kills did land mid-job
    assert kills["board"]["counts"]["cancelled"] > 0  # and the dead clients' jobs were withdrawn
    _assert_clients_whole(kills["live_clients"])
    _assert_board_whole(kills)

    soak = doc["soak"]
    assert soak["operations"] > 0 and soak["lost_jobs"] == 0 and soak["torn_reads"] == 0
    # Crystallizing went on during the soak (a count, not a rate: a loaded machine publishes fewer).
    assert soak["generations_published"] >= 3
    assert soak["worker_kills"] == 1 and soak["worker_deaths"]["seen"] == 1
    assert soak["memory"]["leaked_blocks"] <= 0
    _assert_clients_whole(soak["live_clients"])
    _assert_board_whole(soak)
