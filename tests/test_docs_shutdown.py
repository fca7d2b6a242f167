"""usage.md's Shutdown section says what its own example prints: each reason a stopped coordinator
gives its clients is quoted in the prose beside it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "usage.md"


def _section() -> str:
    return DOC.read_text().split("### Shutdown", 1)[1].split("\n## ", 1)[0]


def test_the_shutdown_example_prints_the_reasons_its_prose_gives(make_name, tmp_path):
    section = _section()
    code = re.search(r"```python\n(.*?)```", section, re.S)[1].replace('"docs-stop"', repr(make_name()))
    myjobs = re.findall(r"```python\n(# myjobs\.py.*?)```", DOC.read_text(), re.S)[0]
    (tmp_path / "myjobs.py").write_text(myjobs)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.strip().splitlines()
    assert len(printed) == 2, proc.stdout
    prose = section.split("```", 2)[2]
    for reason in printed:
        assert f'("{reason}")' in prose, (reason, prose)
        assert f"# {reason}" in section, f"the example's comments should show what it prints: {reason}"
