"""What `pip install shmpool` puts into site-packages and promises: one top-level name, one
version, typed, licensed, with the classifiers it claims."""

from __future__ import annotations

import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import shmpool
from _wheel import session_wheel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, worker_id):
    return session_wheel(tmp_path_factory, worker_id)


def test_the_wheel_adds_exactly_one_top_level_package_and_carries_both_process_roles(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"shmpool"}
    for module in ("shmpool/coordinator/coordinator.py", "shmpool/coordinator/pool.py", "shmpool/workers/worker.py",
                   "shmpool/substrate/alloc.py", "shmpool/data/reader.py", "shmpool/jobs/client.py",
                   "shmpool/tools/stress.py", "shmpool/py.typed"):
        assert module in names, module
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "shmpool = shmpool.coordinator.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_version_is_written_once_and_the_metadata_reads_it():
    assert metadata.version("shmpool") == shmpool.__version__
    assert "version =" not in (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]


def test_metadata_says_linux_python_3_10_to_3_13_mit_and_typed():
    meta = metadata.metadata("shmpool")
    classifiers = set(meta.get_all("Classifier"))
    assert "Operating System :: POSIX :: Linux" in classifiers and "Typing :: Typed" in classifiers
    assert {f"Programming Language :: Python :: 3.{m}" for m in range(10, 14)} <= classifiers
    assert meta["License-Expression"] == "MIT"
    assert (Path(shmpool.__file__).parent / "py.typed").is_file()
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def test_rich_is_an_extra_not_a_dependency():
    requires = metadata.requires("shmpool") or []
    plain = [r for r in requires if "extra ==" not in r]
    assert not any(r.startswith("rich") for r in plain), plain
    assert any(r.startswith("rich") and 'extra == "cli"' in r for r in requires), requires


def test_the_sdist_manifest_carries_the_docs():
    manifest = (ROOT / "MANIFEST.in").read_text().split()
    assert "graft" in manifest and manifest[manifest.index("graft") + 1] == "docs"
