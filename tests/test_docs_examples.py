"""Every Python example of docs/usage.md runs as written (in a subprocess, against real instances)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "usage.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
MYJOBS = next(b for b in BLOCKS if b.startswith("# myjobs.py"))
RUNNABLE = [b for b in BLOCKS if "Coordinator(" in b]
MYJOBS_EXAMPLE = next(b for b in RUNNABLE if '"myjobs:longest_layer", 7' in b and '"myjobs:word_count"' in b)


@pytest.mark.parametrize("index", range(len(RUNNABLE)))
def test_usage_example_runs(index, make_name, tmp_path):
    code = RUNNABLE[index]
    # Fresh instance names per run, so parallel tests and leftovers checks work.
    for old in sorted(set(re.findall(r'"(docs-[a-z-]+)"', code))):
        code = code.replace(f'"{old}"', f'"{make_name()}"')
    (tmp_path / "myjobs.py").write_text(MYJOBS)
    # Run as a file, as a user would: multiprocessing's spawn (the first program) needs one.
    (tmp_path / "example.py").write_text(code)
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    if RUNNABLE[index] is MYJOBS_EXAMPLE:
        # What the example prints of the jobs of myjobs.py: the longest layer of dimension 7 as a
        # context resolved here (dimension, layer, length, verify()), and a positive word count.
        # (A coordinator of the test's own used to run these two jobs again after the docs-demo
        # block, for the same assertions.)
        context_line, count_line = proc.stdout.splitlines()[:2]
        dimension, _layer, _length, verified = context_line.split()
        assert dimension == "7" and verified == "True", proc.stdout
        assert int(count_line) > 0, proc.stdout
