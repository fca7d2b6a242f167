"""The ``shmpool`` command, run as a real process the way a user runs it: ``serve`` as
``python -m``, the short commands (build, stats, dump, cleanup) forked from a command server (the
``cli`` fixture, tests/_cli_command.py), which runs the same ``main()`` without paying the
interpreter and the imports again for each."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.coordinator.cli import parse_duration, parse_size
from shmpool.substrate.names import list_objects

CLI = [sys.executable, "-m", "shmpool.coordinator.cli"]


def _serve(name: str, *extra: str) -> subprocess.Popen:
    """Start ``shmpool serve NAME`` and return once it printed its ready line."""
    proc = subprocess.Popen([*CLI, "serve", name, "--workers", "1", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if "serving" in line:
                return proc
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {proc.stderr.read()}")
    proc.kill()
    raise AssertionError("serve did not print its ready line within 60 s")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def test_sizes_take_si_and_iec_units_as_written_and_durations_take_units():
    assert parse_size("280MB") == parse_size("280M") == parse_size("280 mb") == 280 * 10**6
    assert parse_size("280MiB") == parse_size("280Mi") == parse_size("280mib") == 280 * 2**20
    assert parse_size("1GiB") == 2**30 and parse_size("1GB") == 10**9 and parse_size("1.5kB") == 1500
    assert parse_size("512KiB") == 512 * 1024 and parse_size("4096") == 4096 == parse_size("4096B")
    assert parse_duration("10s") == 10.0 and parse_duration("500ms") == 0.5 and parse_duration("2") == 2.0


def test_build_writes_the_sample_as_one_region_file_per_dimension(tmp_path, cli):
    result = cli("build", str(tmp_path / "data"), "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "data").glob("*.region"))) == 14


def test_build_from_jsonl_serves_the_layers_it_was_given(tmp_path, instance_name, cli):
    lines = [
        {"dimension_id": 7, "dimension_name": "rivers", "layer_id": 1, "text": "the Rhine",
         "keywords": ["europe"], "frequency": 0.5},
        {"dimension_id": 7, "layer_id": 2, "text": "the Nile"},
        {"dimension_id": 9, "dimension_name": "blobs", "layer_id": 3,
         "content_b64": base64.b64encode(b"\x00\xffbinary").decode()},
    ]
    source = tmp_path / "layers.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    result = cli("build", str(tmp_path / "out"), "--from", str(source))
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("*.region"))) == 2
    with Coordinator(instance_name, data_dir=tmp_path / "out", workers=0):
        with shmpool.attach(instance_name) as reader:
            assert reader.dimensions() == {7: "rivers", 9: "blobs"}
            rhine = reader.load_layer_context(7, 1)
            assert rhine.text == "the Rhine" and rhine.keywords == ("europe",) and rhine.frequency == 0.5
            assert bytes(reader.load_layer_context(9, 3).content) == b"\x00\xffbinary"


def test_build_from_jsonl_names_the_bad_line(tmp_path, cli):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"dimension_id": 1, "dimension_name": "x", "layer_id": 1, "text": "ok"}\n'
                      '\n'
                      '{"dimension_id": 1, "text": "no layer id"}\n')
    result = cli("build", str(tmp_path / "out"), "--from", str(source))
    assert result.returncode == 1
    assert "line 3" in result.stderr and "layer_id" in result.stderr
    _no_traceback(result)
    assert not (tmp_path / "out").exists(), "nothing is written when the input has a bad line"


def test_serve_answers_stats_and_dump_then_stops_cleanly_on_sigterm(instance_name, cli):
    proc = _serve(instance_name, "--memory-limit", "100MiB", "--sample")
    try:
        stats = cli("stats", instance_name, "--json")
        assert stats.returncode == 0, stats.stderr
        data = json.loads(stats.stdout)
        assert data["memory_limit"] == 100 * 2**20 and len(data["dimensions"]) == 14
        table = cli("stats", instance_name)
        assert table.returncode == 0 and "pools" in table.stdout and "ok" in table.stdout, table.stderr
        dump = cli("dump", instance_name)
        assert dump.returncode == 0, dump.stderr
        state = json.loads(dump.stdout)
        assert state["view"] == "reader"
        assert all(d["generation"] >= 1 and d["layers"]["count"] > 0 for d in state["dimensions"])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()
    assert list_objects(instance_name) == ([], [])


def test_a_missing_instance_is_one_line_and_exit_1(instance_name, cli):
    result = cli("stats", instance_name)
    assert result.returncode == 1 and f"no coordinator {instance_name!r} is running" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    _no_traceback(result)


def test_cleanup_refuses_a_live_instance_and_sweeps_a_crashed_one(instance_name, cli):
    proc = _serve(instance_name)
    workers = _children(proc.pid)
    refused = cli("cleanup", instance_name)
    assert refused.returncode == 1 and "refusing" in refused.stderr
    assert list_objects(instance_name)[0], "a refused cleanup must not remove anything"

    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 30  # a hang catcher: they notice the dead coordinator within ~0.2 s
    while not all(_gone(w) for w in workers):
        assert time.monotonic() < deadline, "workers outlived their coordinator"
        time.sleep(0.05)
    assert list_objects(instance_name)[0], "a crashed coordinator leaves its segments behind"
    swept = cli("cleanup", instance_name)
    assert swept.returncode == 0, swept.stderr
    [line] = swept.stdout.splitlines()  # one summary line, not every name
    assert re.fullmatch(rf"shmpool: removed (\d+) objects of '{instance_name}' \((\d+) segments, (\d+) semaphores?\)",
                        line), line
    total, segs, sems = map(int, re.search(r"removed (\d+).*\((\d+) segments, (\d+)", line).groups())
    assert total == segs + sems and segs >= 2 and sems >= 1  # the coordinator's wake semaphore
    assert list_objects(instance_name) == ([], [])
    again = cli("cleanup", instance_name)
    assert again.returncode == 0 and "nothing" in again.stdout


def test_short_stress_run_with_worker_kills_reports_no_torn_lost_or_leaked(stress_run):
    result, report, data = stress_run  # tests/_stress_run.py: 2 clients, 2 s, kills, --out
    assert data["total_ops"] > 0 and data["ok"]
    assert data["torn_reads"] == 0 and data["wrong_content"] == 0
    assert data["lost_jobs"] == 0 and data["leaked_blocks"] == 0 and data["leftover_objects"] == []
    # Publishing and killing went on during the run (counts, not rates: a loaded machine does fewer).
    assert data["generations_published"] >= 2 and data["worker_kills"] >= 1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in result.stdout
    else:
        assert report.with_suffix(".png").exists()
