"""The demo's and the stress test's own worker kills are not reported as errors; a kill from
outside still is."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from loguru import logger

from shmpool.coordinator import Coordinator


@pytest.fixture
def records():
    seen: list[tuple[str, str]] = []
    logger.enable("shmpool")
    sink = logger.add(lambda m: seen.append((m.record["level"].name, m.record["message"])), level="INFO")
    yield seen
    logger.remove(sink)
    logger.disable("shmpool")


def _deaths(coord: Coordinator, count: int) -> list[dict]:
    deadline = time.monotonic() + 30  # only catches a hang: supervision runs every 20 ms
    while len(coord.stats()["workers"]["deaths"]) < count:
        assert time.monotonic() < deadline, coord.stats()["workers"]
        time.sleep(0.02)
    return coord.stats()["workers"]["deaths"]


def test_a_planned_kill_is_info_naming_who_and_an_outside_kill_stays_an_error(instance_name, records):
    with Coordinator(instance_name, workers=2) as coord:
        planned, outside = coord.stats()["workers"]["pids"]
        assert coord.kill_worker(planned, why="the stress test")
        first = _deaths(coord, 1)[0]
        assert first["pid"] == planned and "by the stress test (on purpose)" in first["meaning"]
        os.kill(outside, signal.SIGKILL)
        second = _deaths(coord, 2)[1]
        assert second["pid"] == outside and "OOM killer" in second["meaning"]
        assert not coord.kill_worker(12345678, why="nobody")  # not a worker of ours: nothing killed
    about = {pid: [lvl for lvl, msg in records if f"(pid {pid})" in msg] for pid in (planned, outside)}
    assert about[planned] == ["INFO"] and about[outside] == ["ERROR"], records


def test_the_demo_prints_no_error_for_the_kills_it_makes(tmp_path):
    # 2 s and 2 clients: the stress's first kill comes at 1 s (shmpool.tools.stress.KILL_EVERY / 2);
    # the clients' load beyond that is CPU the rest of the suite needs.
    proc = subprocess.run([sys.executable, "-m", "shmpool.tools.demo", "--stress-seconds", "2", "--clients", "2"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kills = re.search(r"worker kills / deaths\W+(\d+) / (\d+)", proc.stdout)
    assert kills and int(kills[1]) >= 1 and kills[1] == kills[2], proc.stdout  # it did kill, and saw it
    assert "ERROR" not in proc.stderr and "OOM killer" not in proc.stderr, proc.stderr[-3000:]
