"""The newcomer's first program (issue 23, "Done means"): usage.md's first page, run as written.

It starts a coordinator with no configuration, publishes keyed text and an 8 MB array, reads them
from 8 spawned processes by dimension name and key, runs jobs in the workers with array arguments
(a small one inline, a 16 MB one spilled into shared memory and read there), crosses the 75%
capacity threshold and must see the warning on stderr, and leaves nothing in /dev/shm. The test
checks each of those against what the program's comments say it prints.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from shmpool.substrate.names import list_objects

DOC = Path(__file__).resolve().parent.parent / "docs" / "usage.md"


def _first_program() -> str:
    first_page = DOC.read_text().split("## Your first program", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", first_page, re.S)[1]


def test_usage_md_opens_with_the_first_program():
    text = DOC.read_text()
    assert text.index("## Your first program") < text.index("## 1. Serve data")
    program = _first_program()
    for needle in ('reader.get("prices", "AAPL").array()', 'add_layer("greeting"', "np.linspace",
                   "Pool(8)", "shmpool.connect", "client.submit(max, ramp)", "client.map(len, [small, ramp])",
                   "passed the warning threshold"):
        assert needle in program, needle


def test_the_first_program_runs_as_written_and_says_what_its_comments_say(make_name, tmp_path):
    name = make_name()
    program = _first_program().replace('"docs-first"', repr(name))
    (tmp_path / "first.py").write_text(program)
    env = {k: v for k, v in os.environ.items() if k not in ("SHMPOOL_WARNINGS", "LOGURU_LEVEL")}
    proc = subprocess.run([sys.executable, "first.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)  # only catches a hang: 8 spawned readers and 2 workers
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.splitlines()
    promised = [line[2:] for line in program.splitlines() if line.strip().startswith("# (") or
                re.fullmatch(r"\s*# [\d.]+", line)]
    assert [p.strip() for p in printed] == [p.strip().lstrip("# ") for p in promised], (printed, promised)
    warned = [line for line in proc.stderr.splitlines() if "passed the warning threshold (75%)" in line]
    assert len(warned) == 1 and "WARNING" in warned[0], proc.stderr
    assert "INFO" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert list_objects(name) == ([], [])
