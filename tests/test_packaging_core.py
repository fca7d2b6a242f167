"""The compiled core ships as a built wheel: it installs and works where no compiler exists, and a
build without a compiler fails with one message that says what to install.

They share the session's one wheel build (tests/_wheel.py), so they are in CI like every other test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from _wheel import pip_wheel, session_wheel, source_copy



@pytest.fixture(scope="module")
def wheel(tmp_path_factory, worker_id):
    return session_wheel(tmp_path_factory, worker_id)


def test_the_wheel_carries_the_built_core_and_its_stubs_but_not_its_sources(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    core = [n for n in names if n.startswith("shmpool/_core/")]
    for stem in ("_sync", "_board", "_lookup"):
        assert any(n.startswith(f"shmpool/_core/{stem}.") and n.endswith(".so") for n in core), core
        assert f"shmpool/_core/{stem}.pyi" in core, core
    assert not [n for n in core if n.endswith((".pyx", ".pxd", ".c", ".h"))], core
    assert "-linux_" in wheel.name or "manylinux" in wheel.name, wheel.name  # a platform wheel


def test_the_wheel_installs_and_locks_in_a_fresh_venv_without_a_compiler(wheel, tmp_path):
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    env = {**os.environ, "CC": "/nonexistent/cc", "PATH": f"{venv / 'bin'}:/usr/bin:/bin"}
    py = venv / "bin" / "python"
    # The wheel's files unpacked into the fresh venv by this interpreter's pip (no build step).
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300, env=env)
    # The dependencies come from this test's environment, behind the fresh venv's own packages.
    deps = sysconfig.get_paths()["purelib"]
    code = ("import mmap, shmpool._core as c; "
            "w = c.SharedWords(mmap.mmap(-1, 4096)); m = c.RobustMutex(w, 8, 0, 1, 'probe'); m.initialize(); "
            "m.acquire(1.0); m.release(); print(c._sync.__file__)")
    done = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**env, "PYTHONPATH": deps})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(venv)), done.stdout


def test_a_build_without_a_compiler_says_what_to_install_in_one_message(tmp_path):
    source = source_copy(tmp_path / "source")  # its own copy: a build writes into the tree it builds
    done = pip_wheel(source, tmp_path / "out", env={**os.environ, "CC": "/nonexistent/cc"})
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "apt-get install gcc python3-dev" in out and "/nonexistent/cc" in out
    assert "gcc: " not in out and "#include" not in out  # no compiler output
