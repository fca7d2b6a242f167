"""Builds shmpool's compiled core, ``shmpool._core``; all other metadata is in pyproject.toml.

The core is a Cython extension (docs/architecture.md, "The compiled core"). Building it needs a
C compiler and the Python headers. When either is missing, the build stops with one message
that says what to install, instead of a screen of compiler output (checked before compiling,
with a tiny probe program whose output is kept to ourselves).

Cython runs in build_ext, after that probe, not when this file is read: pip reads it three times
a build (requirements, metadata, wheel), and a machine without a compiler is told so in a second
rather than after Cython has translated the core (~10 s of CPU).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
CORE = "shmpool/_core"

NEEDS = ("building shmpool's compiled core (shmpool._core) needs a C compiler and the Python {ver} "
         "headers: on Debian/Ubuntu `apt-get install gcc python3-dev`, on Fedora `dnf install gcc "
         "python3-devel`, on Alpine `apk add gcc musl-dev python3-dev`; or install a prebuilt wheel "
         "(`pip wheel .` on a machine that has them).")


def _probe_compiler() -> str | None:
    """Why this machine cannot compile the core, or None if a probe program with Python.h builds."""
    include = sysconfig.get_paths()["include"]
    if not Path(include, "Python.h").is_file():
        return f"Python.h is not in {include}"
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "probe.c")
        src.write_text("#include <Python.h>\n#include <pthread.h>\n#include <linux/futex.h>\n"
                       "int main(void) { return 0; }\n")
        try:
            done = subprocess.run([*cc, f"-I{include}", "-c", str(src), "-o", str(Path(tmp, "probe.o"))],
                                  capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"the C compiler {cc[0]!r} cannot run ({exc})"
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return f"{' '.join(cc)} cannot compile a file that includes Python.h ({last})"
    return None


class BuildCore(build_ext):
    def run(self) -> None:
        why = _probe_compiler()
        if why is not None:
            ver = sysconfig.get_python_version()
            raise SystemExit(f"error: {why}.\n{NEEDS.format(ver=ver)}")
        from Cython.Build import cythonize  # a build requirement (pyproject.toml [build-system])

        translated = cythonize(self.extensions, language_level=3, quiet=True,
                               compiler_directives={"boundscheck": False, "wraparound": False,
                                                    "cdivision": True, "embedsignature": True})
        for ext, c_ext in zip(self.extensions, translated, strict=True):
            ext.sources = c_ext.sources  # the .c files; ext keeps what setuptools set on it
        super().run()


def _extensions() -> list[Extension]:
    common = dict(include_dirs=[CORE], extra_compile_args=["-O2", "-Wno-unused-function"],
                  define_macros=[("_GNU_SOURCE", "1")])
    depends = [f"{CORE}/{name}" for name in ("shm_sync.h", "lookup_ids.h", "key_hash.h", "_sync.pxd", "_index_layout.pxd")]
    return [Extension(f"shmpool._core.{stem}", [f"{CORE}/{stem}.pyx"], depends=depends, **common)
            for stem in ("_sync", "_board", "_lookup")]


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildCore})
