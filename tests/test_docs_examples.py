"""Every Python example of docs/usage.md runs as written (in a subprocess, against real instances)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "usage.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
MYJOBS = next(b for b in BLOCKS if b.startswith("# myjobs.py"))
RUNNABLE = [b for b in BLOCKS if "Coordinator(" in b]


@pytest.mark.parametrize("index", range(len(RUNNABLE)))
def test_usage_example_runs(index, make_name, tmp_path):
    code = RUNNABLE[index]
    # Fresh instance names per run, so parallel tests and leftovers checks work.
    for old in sorted(set(re.findall(r'"(docs-[a-z-]+)"', code))):
        code = code.replace(f'"{old}"', f'"{make_name()}"')
    (tmp_path / "myjobs.py").write_text(MYJOBS)
    extra = textwrap.dedent("""
        with Coordinator(NAME, data_dir=shmpool.SAMPLE, workers=1, job_modules=["myjobs"]):
            with shmpool.connect(NAME) as client:
                ctx = client.submit("myjobs:longest_layer", 7).result(10)
                assert ctx.dimension_id == 7 and ctx.verify()
                assert client.submit("myjobs:word_count", [[1, 1], [2, 2]]).result(10) > 0
    """) if "docs-demo" in RUNNABLE[index] else ""
    script = code + (f"\nimport shmpool\nNAME = {make_name()!r}\n" + extra if extra else "")
    # Run as a file, as a user would: multiprocessing's spawn (the first program) needs one.
    (tmp_path / "example.py").write_text(script)
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
