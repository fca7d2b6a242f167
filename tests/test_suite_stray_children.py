"""A failing test does not leave the processes it started running (tests/_stray_children.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("_stray_children_cases.py")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_failing_tests_children_are_stopped_and_a_passing_tests_are_not(tmp_path):
    stray, kept = tmp_path / "stray.pid", tmp_path / "kept.pid"
    env = {**os.environ, "STRAY_PID_FILE": str(stray), "KEPT_PID_FILE": str(kept)}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_XDIST_TESTRUNUID", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider", str(CASES)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=CASES.parent)
    kept_pid = int(kept.read_text())
    try:
        assert "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
        assert f"stopped processes it left running: [{stray.read_text()}]" in done.stdout, done.stdout
        assert not _running(int(stray.read_text()))
        assert _running(kept_pid)  # orphaned to init by the ended pytest, but not killed by it
    finally:
        os.kill(kept_pid, signal.SIGKILL)
