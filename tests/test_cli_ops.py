"""Operations through the real ``shmpool`` command: env defaults, JSON logs, health, stats --json,
completion, cleanup's summary.

``serve`` runs as ``python -m shmpool``; the short commands (health, stats, cleanup, completion) run
forked from a command server (the ``cli`` fixture, tests/_cli_command.py), a third of a second of
CPU less per command: what they show does not depend on the import. ``--version`` checks
``python -m shmpool`` itself.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import shmpool
from shmpool.substrate.names import list_objects

CLI = [sys.executable, "-m", "shmpool"]
MiB = 2**20


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)


def _ready_line(proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            line = proc.stdout.readline()
            if "serving" in line:
                return line
        assert proc.poll() is None, f"serve exited with {proc.returncode}: {proc.stderr.read()}"
    raise AssertionError("serve did not print its ready line within 60 s")


def test_env_defaults_json_logs_health_and_stats_of_a_served_instance(instance_name, sample_dir, cli):
    env = {**os.environ, "SHMPOOL_WORKERS": "1", "SHMPOOL_MEMORY_LIMIT": "64MiB",
           "SHMPOOL_DATA_DIR": str(sample_dir), "SHMPOOL_EVICT": "off"}
    # The flag wins over its variable: 100MiB, not 64MiB.
    proc = subprocess.Popen([*CLI, "--log-format", "json", "serve", instance_name, "--memory-limit", "100MiB"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = _ready_line(proc)
        assert "14 dimensions, 1 worker, pid" in line, line  # "1 worker", not "1 workers"
        healthy = cli("health", instance_name)
        assert healthy.returncode == 0, healthy.stderr
        assert healthy.stdout == f"ok: {instance_name!r} is serving 14 dimensions, 1 worker\n"
        with shmpool.connect(instance_name) as client:
            for i in range(3):
                assert client.lookup(1 + i, 1).verify()
        stats = cli("stats", instance_name, "--json")
        assert stats.returncode == 0, stats.stderr
        data = json.loads(stats.stdout)
        assert data["schema_version"] == 2
        assert data["memory_limit"] == 100 * MiB
        assert data["capacity_state"] == "ok" and len(data["dimensions"]) == 14
        assert data["jobs"]["completed"] == 3 and data["jobs"]["submitted"] == 3
        assert data["workers"]["running"] == 1 and data["workers"]["deaths"] == 0
        table = cli("stats", instance_name, env={**os.environ, "COLUMNS": "200"})
        assert table.returncode == 0, table.stderr
        assert "3 completed" in table.stdout and "1 worker (0 died)" in table.stdout, table.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    err = proc.stderr.read()
    records = [json.loads(raw) for raw in err.splitlines()]  # every log line is one JSON object
    messages = [r["record"]["message"] for r in records]
    assert any("started" in m for m in messages) and any("stopped" in m for m in messages), messages
    assert {r["record"]["level"]["name"] for r in records} >= {"INFO"}
    assert list_objects(instance_name) == ([], [])
    gone = cli("health", instance_name)
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.strip() == f"shmpool health: error: no coordinator {instance_name!r} is running " \
                                  "(nothing of it in /dev/shm)"


def test_health_fails_for_a_crashed_coordinator_and_cleanup_verbose_lists_what_went(instance_name, sample_dir, cli):
    proc = subprocess.Popen([*CLI, "serve", instance_name, "--workers", "0", "--data-dir", str(sample_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _ready_line(proc)
    proc.kill()
    proc.wait(10)
    sick = cli("health", instance_name)
    assert sick.returncode == 1, sick.stdout
    [line] = sick.stderr.splitlines()
    assert f"{instance_name!r} is not serving" in line and f"shmpool cleanup {instance_name}" in line
    segments, semaphores = list_objects(instance_name)
    swept = cli("cleanup", instance_name, "--verbose")
    assert swept.returncode == 0, swept.stderr
    head, *names = swept.stdout.splitlines()
    n = len(segments) + len(semaphores)
    from shmpool.coordinator.cli_inspect import plural  # a crashed instance holds one semaphore now
    assert head == (f"shmpool: removed {n} objects of {instance_name!r} ({plural(len(segments), 'segment')}, "
                    f"{plural(len(semaphores), 'semaphore')})")
    assert sorted(names) == sorted(f"removed {o}" for o in segments + semaphores)
    assert list_objects(instance_name) == ([], [])


def test_bash_completion_offers_commands_flags_and_running_instances(cli):
    script = cli("completion", "bash")
    assert script.returncode == 0, script.stderr

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        probe = (f'{script.stdout}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _shmpool; '
                 'printf "%s\\n" "${COMPREPLY[@]}"')
        out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert complete("shmpool", "he") == ["health"]
    assert set(complete("shmpool", "")) >= {"serve", "build", "stats", "dump", "health", "cleanup", "stress"}
    assert "--metrics-port" in complete("shmpool", "serve", "--met")
    assert complete("shmpool", "cleanup", "--verb") == ["--verbose"]


def test_python_dash_m_shmpool_is_the_command():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"shmpool {shmpool.__version__}"


def test_json_log_format_reaches_the_workers_so_every_line_of_a_debug_run_is_one_object(instance_name, sample_dir):
    proc = subprocess.Popen([*CLI, "--log-format", "json", "--log-level", "DEBUG", "serve", instance_name,
                             "--workers", "1", "--data-dir", str(sample_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _ready_line(proc)
        with shmpool.connect(instance_name) as client:
            assert client.lookup(1, 1).verify()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    records = [json.loads(raw) for raw in proc.stderr.read().splitlines()]
    from_worker = [r for r in records if r["record"]["extra"].get("worker") == 0]
    assert any("served 1 jobs" in r["record"]["message"] for r in from_worker), records


def test_cleanup_dead_sweeps_a_killed_coordinator_and_leaves_a_live_one(instance_name, sample_dir, cli):
    dead, live = instance_name + "d", instance_name + "l"
    procs = {n: subprocess.Popen([*CLI, "serve", n, "--workers", "1", "--data-dir", str(sample_dir)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in (dead, live)}
    try:
        for proc in procs.values():
            _ready_line(proc)
        procs[dead].kill()
        procs[dead].wait(10)
        deadline = time.monotonic() + 30  # its worker's watchdog ends the worker
        while not list_objects(dead)[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list_objects(dead)[0], "the killed coordinator left nothing to sweep"
        swept = cli("cleanup", "--dead", "--prefix", instance_name, "--older-than", "0")
        assert swept.returncode == 0, swept.stderr
        assert swept.stdout == f"shmpool: removed 1 dead instance: {dead!r}\n"
        assert list_objects(dead) == ([], [])
        assert cli("health", live).returncode == 0
        again = cli("cleanup", "--dead", "--prefix", instance_name, "--older-than", "0")
        assert again.stdout == "shmpool: no dead instances to clean up\n"
    finally:
        procs[live].send_signal(signal.SIGTERM)
        assert procs[live].wait(30) == 0


def test_cleanup_needs_a_name_or_dead_and_not_both(instance_name, cli):
    for args in ((), (instance_name, "--dead"), ("--prefix", "x")):
        out = cli("cleanup", *args)
        assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, (args, out.stderr)
