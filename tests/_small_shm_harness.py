"""The small-/dev/shm harness (tests/test_small_shm.py, tests/test_small_shm_board_advice.py): a
scenario of tests/_small_shm.py run in a private mount namespace whose /dev/shm is a tmpfs of a
given size, its last stdout line as JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
SCRIPT = TESTS / "_small_shm.py"
MiB = 1024 * 1024
UNSHARE = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc"]


def _unshare_problem() -> str | None:
    if not sys.platform.startswith("linux"):
        return "private mount namespaces are Linux only"
    if shutil.which("unshare") is None:
        return "the unshare tool is not installed"
    probe = subprocess.run([*UNSHARE, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -m with a tmpfs mount is not permitted here: {probe.stderr.strip()}"
    return None


_PROBLEM = _unshare_problem()


def _run(scenario: str, name: str, size: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    # Not exec'd: the shell stays pid 1 of the namespace, so the script is an ordinary process
    # (pid 1 is shielded from some signals) and its death by a signal is the status 128 + N.
    cmd = f"mount -t tmpfs -o size={size} tmpfs /dev/shm && {sys.executable} {SCRIPT} {scenario} {name}"
    try:
        done = subprocess.run([*UNSHARE, "sh", "-c", cmd], capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired as exc:  # --kill-child: everything in the namespace dies with it
        pytest.fail(f"{scenario}: no answer in {exc.timeout} s (a process of it killed by a signal?)\n"
                    f"{(exc.stderr or b'')[-4000:].decode(errors='replace')}")
    # A SIGBUS anywhere shows here: 135 (128 + SIGBUS) for the script itself or, for another
    # process of it, a hang or an answer that says so.
    assert done.returncode == 0, f"{scenario}: exit status {done.returncode}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])
