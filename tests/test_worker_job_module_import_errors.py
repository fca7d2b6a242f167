"""A job whose module raises while it is imported is refused with UnknownJob naming the module
and what it raised, as one it cannot find is (docs/usage.md), and the worker lives on: before,
only ImportError was caught, so a RuntimeError at import reached the client as that
RuntimeError, and a module calling sys.exit() at import ended the worker."""

from __future__ import annotations

import os
import secrets

import pytest

import shmpool
from conftest import TEST_PREFIX
from shmpool import UnknownJob
from shmpool.coordinator import Coordinator
from shmpool.substrate.names import list_objects

MODULES = ["_jobs_broken_at_import", "_jobs_exit_at_import", "_jobs_counted_broken_import"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    imports = tmp_path_factory.mktemp("imports") / "counted"
    os.environ["SHMPOOL_TEST_IMPORTS"] = str(imports)  # the workers inherit it
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    try:
        with Coordinator(name, data_dir=shmpool.SAMPLE, workers=1, job_modules=MODULES) as coord:
            with shmpool.Client(name) as c:
                yield c, coord
    finally:
        del os.environ["SHMPOOL_TEST_IMPORTS"]
    assert list_objects(name) == ([], [])


def test_a_module_raising_at_import_is_unknown_job_naming_module_and_error(client):
    c, _ = client
    with pytest.raises(UnknownJob) as err:
        c.submit("_jobs_broken_at_import:never", 1).result(30)
    assert err.value.job == "_jobs_broken_at_import:never"
    assert "cannot import _jobs_broken_at_import" in err.value.reason
    assert "RuntimeError" in err.value.reason and "fails at import on purpose" in err.value.reason


def test_a_module_exiting_at_import_is_unknown_job_and_the_worker_stays(client):
    c, coord = client
    pids = set(coord.stats()["workers"]["pids"])
    with pytest.raises(UnknownJob) as err:
        c.submit("_jobs_exit_at_import:never", 1).result(30)
    assert "cannot import _jobs_exit_at_import" in err.value.reason and "SystemExit" in err.value.reason
    # The same worker serves the next job: the exit did not end it (no replacement needed).
    assert c.submit(max, [3, 9, 4]).result(30) == 9
    assert set(coord.stats()["workers"]["pids"]) == pids


def test_a_module_that_raised_at_import_is_not_run_again_for_each_job(client):
    """Its top level ran once per job (the docs read-through's second look): a side effect at
    import (a file written, a Coordinator started) repeated with every job naming it. The
    worker remembers the failure, as it remembers a module that imported."""
    c, _ = client
    for _ in range(3):
        with pytest.raises(UnknownJob, match="after a side effect"):
            c.submit("_jobs_counted_broken_import:never", 1).result(30)
    assert open(os.environ["SHMPOOL_TEST_IMPORTS"]).read().count("imported") == 1
