"""Run by tests/test_suite_stray_children.py in a pytest of its own, never collected by the suite."""

import os
import subprocess
import sys


def test_fails_and_leaves_a_child_running():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.environ["STRAY_PID_FILE"], "w") as fh:
        fh.write(str(child.pid))
    assert False, "fails on purpose"


def test_passes_and_hands_its_child_on():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.environ["KEPT_PID_FILE"], "w") as fh:
        fh.write(str(child.pid))
