"""Warnings reach a user who configured nothing: the process running a Coordinator prints shmpool's
WARNING and above on stderr, and nothing below it; one documented switch silences it.

Each test is a real program in a subprocess (its stderr is what a user sees in a terminal).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

MiB = 1024 * 1024

# Crosses the 75% warning threshold of a 16 MiB limit with one 13 MiB layer (81%, below the 85%
# at which eviction starts), then reads the layer back. No logging configured, no stop().
PROGRAM = textwrap.dedent("""
    import sys
    import shmpool

    name, folder, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "silenced":
        shmpool.show_warnings(False)
    if mode == "own-loguru":
        from loguru import logger
        logger.remove()
        logger.add(sys.stdout, level="WARNING", format="APP {level} {message}")
    with shmpool.Coordinator(name, data_dir=folder, workers=0, memory_limit=16 * 2**20) as coord:
        proto = coord.create_proto_dimension(1, "big")
        proto.add_layer(1, b"x" * (13 * 2**20))
        coord.crystallize(1)
        with shmpool.attach(name) as reader:
            assert len(reader.load_layer_context(1, 1)) == 13 * 2**20
    print("done", flush=True)
""")


def _run(name: str, folder, mode: str = "plain", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    proc = subprocess.run([sys.executable, "-c", PROGRAM, name, str(folder), mode], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr
    return proc


def test_crossing_the_warning_threshold_is_printed_on_stderr(instance_name, tmp_path):
    proc = _run(instance_name, tmp_path)
    lines = [line for line in proc.stderr.splitlines() if "passed the warning threshold" in line]
    assert len(lines) == 1, proc.stderr
    assert "WARNING" in lines[0]


def test_only_warnings_and_above_are_printed(instance_name, tmp_path):
    proc = _run(instance_name, tmp_path)
    # The start-up and stop lines are INFO: a library says nothing when all is well.
    assert "started in" not in proc.stderr and "stopped" not in proc.stderr, proc.stderr
    assert "INFO" not in proc.stderr and "DEBUG" not in proc.stderr, proc.stderr


def test_show_warnings_false_silences_them(instance_name, tmp_path):
    proc = _run(instance_name, tmp_path, "silenced")
    assert proc.stderr == "", proc.stderr


def test_environment_switch_silences_them(instance_name, tmp_path):
    proc = _run(instance_name, tmp_path, env={"SHMPOOL_WARNINGS": "0"})
    assert proc.stderr == "", proc.stderr


def test_an_application_with_its_own_loguru_sinks_gets_them_there(instance_name, tmp_path):
    proc = _run(instance_name, tmp_path, "own-loguru")
    assert "APP WARNING shared memory usage" in proc.stdout, (proc.stdout, proc.stderr)
    assert "passed the warning threshold" not in proc.stderr  # it removed every sink: none of ours is added


def test_a_skipped_region_file_is_printed_on_stderr(instance_name, tmp_path):
    (tmp_path / "broken.region").write_bytes(b"not a region file")
    proc = _run(instance_name, tmp_path)
    assert "skipping region file" in proc.stderr and "broken.region" in proc.stderr, proc.stderr


LOST_WORKER = textwrap.dedent("""
    import os, signal, sys, time
    import shmpool

    with shmpool.Coordinator(sys.argv[1], data_dir=sys.argv[2], workers=1) as coord:
        os.kill(coord.stats()["workers"]["pids"][0], signal.SIGKILL)
        deadline = time.monotonic() + 60  # only catches a hang: supervision runs every 20 ms
        while not coord.stats()["workers"]["deaths"] and time.monotonic() < deadline:
            time.sleep(0.02)
""")


def test_a_lost_worker_is_printed_on_stderr(instance_name, tmp_path):
    proc = subprocess.run([sys.executable, "-c", LOST_WORKER, instance_name, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "worker 0 (pid" in proc.stderr and "SIGKILL" in proc.stderr, proc.stderr
