"""CLI defects a new user met in their first hour (issue 23), each in a real ``shmpool`` process: a
``python -m shmpool`` where the import matters (serve, a missing optional package), else forked
from a command server (the ``cli`` fixture, tests/_cli_command.py: the same ``main()``)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

import shmpool
from _blocked_imports import blocker
from shmpool.jobs.callables import target_of
from shmpool.substrate.names import list_objects

CLI = [sys.executable, "-m", "shmpool"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def served(instance_name):
    proc = subprocess.Popen([*CLI, "serve", instance_name, "--workers", "1", "--sample"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60  # only catches a hang
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        if select.select([proc.stdout], [], [], 0.1)[0] and "serving" in proc.stdout.readline():
            break
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.parametrize("value", ["-1s", "-5", "-0.5s"])
def test_a_negative_duration_is_refused_for_what_it_is(instance_name, value, cli):
    result = cli("stress", instance_name, "--duration", value)
    assert result.returncode == 2
    assert "expected one argument" not in result.stderr and value in result.stderr, result.stderr


def test_the_missing_rich_hint_of_stress_does_not_talk_about_stats(instance_name, tmp_path):
    result = run_cli("stress", instance_name, "--duration", "1", env={"PYTHONPATH": blocker(tmp_path, "rich")})
    assert result.returncode == 1 and "shmpool[cli]" in result.stderr, result.stderr
    assert "stats" not in result.stderr, result.stderr


def test_after_a_crash_the_cleanup_hint_is_given_once(served, instance_name, cli):
    served.kill()
    served.wait(10)
    try:
        for command in ("health", "stats", "dump"):
            result = cli(command, instance_name)
            assert result.returncode == 1, result.stderr
            assert result.stderr.count("cleanup") == 1, result.stderr
            assert f"shmpool cleanup {instance_name}" in result.stderr, result.stderr
    finally:
        assert cli("cleanup", instance_name).returncode == 0
    assert list_objects(instance_name) == ([], [])


def test_stats_headers_are_whole_at_80_columns_and_lines_unbroken_in_a_pipe(served, instance_name, cli):
    narrow = cli("stats", instance_name, env={**os.environ, "COLUMNS": "80"})
    assert narrow.returncode == 0, narrow.stderr
    assert "…" not in narrow.stdout, narrow.stdout
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80, narrow.stdout
    piped = cli("stats", instance_name, env={**os.environ, "COLUMNS": ""})
    memory = [line for line in piped.stdout.splitlines() if line.startswith("memory:")]
    assert memory and "refused by the limit)" in memory[0], piped.stdout  # one line, not cut at 80


def test_a_builtin_function_is_named_by_the_module_users_import_it_from():
    import functools
    import operator

    assert target_of(os.getcwd) == "os:getcwd"
    assert target_of(operator.add) == "operator:add"
    assert target_of(functools.reduce) == "functools:reduce"


def test_os_getcwd_runs_when_os_is_allowed(instance_name, tmp_path):
    with shmpool.Coordinator(instance_name, workers=1, job_modules=["os"]):
        with shmpool.connect(instance_name) as client:
            assert client.submit(os.getcwd).result(30) == os.getcwd()


def test_a_c_function_re_exported_by_an_allowed_module_is_still_refused_elsewhere(instance_name, tmp_path,
                                                                                  monkeypatch):
    # "mymod:system" (mymod did `from os import system`) stays refused with job_modules=["mymod"]:
    # os.system's home is os, not mymod.
    (tmp_path / "mymod.py").write_text("from os import system\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with shmpool.Coordinator(instance_name, workers=1, job_modules=["mymod"]):
        with shmpool.connect(instance_name) as client:
            with pytest.raises(shmpool.UnknownJob) as err:
                client.submit("mymod:system", "true").result(30)
    assert "os's" in str(err.value), str(err.value)
