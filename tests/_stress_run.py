"""One short ``shmpool stress --out`` run, shared by the tests that check its report.

tests/test_cli.py holds the run to its verdict (nothing torn, lost or leaked) and
tests/test_cli_stress_report.py to its time series and figure. The run (2 clients for 2 s, a
publication every 0.5 s, workers SIGKILLed, the first kill at 1 s) costs a few seconds of CPU
(7.7 s with 8 clients in 4 processes, which tested nothing more), and both read the same report,
so it runs once per worker session; tests/conftest.py's scheduler keeps the two tests on one
worker (SAME_WORKER).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from shmpool.substrate.names import list_objects

STRESS_ARGS = ("--clients", "2", "--duration", "2s", "--crystallize-every", "0.5s", "--kill-workers",
               "--workers", "2")


class StressRun(NamedTuple):
    result: subprocess.CompletedProcess[str]
    report: Path    # the JSON; the figure is report.with_suffix(".png")
    data: dict[str, Any]


@pytest.fixture(scope="session")
def stress_run(tmp_path_factory: pytest.TempPathFactory) -> StressRun:
    from conftest import TEST_PREFIX

    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"  # session-scoped, so not from the make_name fixture
    out = tmp_path_factory.mktemp("stress")
    result = subprocess.run([sys.executable, "-m", "shmpool", "stress", name, *STRESS_ARGS, "--out", str(out)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list_objects(name) == ([], [])
    [report] = out.glob("stress-*.json")
    return StressRun(result, report, json.loads(report.read_text()))
