"""A test that kills its xdist worker makes the run fail, naming the test; it never hangs it.

Under the suite's own scheduler (tests/conftest.py, SharedFixtureScheduling) a segfault in a test
used to hang the whole run: xdist's LoadScopeScheduling put the crashed test back in the queue,
the next worker ran it and died too, and the replacement worker was never given work, so the
controller waited forever on idle workers. Seen when a merge brought in a use-after-unmap.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_a_worker_killed_by_its_test_fails_that_test_and_the_rest_still_run(tmp_path: Path) -> None:
    (tmp_path / "test_dies.py").write_text("import ctypes\n\ndef test_dies():\n    ctypes.string_at(0)\n")
    (tmp_path / "test_fine.py").write_text("".join(f"def test_fine_{i}():\n    assert True\n\n" for i in range(8)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    # -p conftest: this suite's conftest (its scheduler) as a plugin, for files outside tests/.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-n", "2", "-q", "-p", "no:cacheprovider",
                           "test_dies.py", "test_fine.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)  # a deadline that only catches the hang this test is about
    tail = proc.stdout[-2000:]
    assert proc.returncode == 1, tail
    assert "1 failed, 8 passed" in tail, tail
    assert "crashed while running 'test_dies.py::test_dies'" in proc.stdout, tail
    assert proc.stdout.count("node down") == 1, "the crashed test was run again (another worker died)"
