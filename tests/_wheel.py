"""One wheel of this checkout per test session, built from a copy of its files.

A build writes into the tree it builds (setuptools' ``build/`` and ``*.egg-info``, Cython's ``.c``
files), so two builds of one checkout at once, on two xdist workers, break each other: CI failed
that way. Each build here therefore runs on its own copy of the checkout's files, and the wheel
that several tests inspect is built once per session: the first worker to ask builds it under a
file lock in the session's shared temporary directory, the others wait and reuse it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 600  # catches a hung build only; a build takes ~30-90 s here


def source_copy(dest: Path) -> Path:
    """The checkout's source files (tracked or new, not ignored: no venv, no build products) in `dest`."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True, timeout=60).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():  # a file deleted but not yet committed is still listed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def pip_wheel(source: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(source)],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=env)


def session_wheel(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    out = shared / "shmpool-wheel"
    with FileLock(str(shared / "shmpool-wheel.lock")):
        wheels = sorted(out.glob("shmpool-*.whl"))
        if not wheels:
            source = source_copy(shared / "shmpool-wheel-source")
            done = pip_wheel(source, out)
            assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
            wheels = sorted(out.glob("shmpool-*.whl"))
    (wheel,) = wheels
    return wheel
