"""A user's mistake at the ``shmpool`` command: one line on stderr naming it, no traceback, exit 2
for usage (checked before anything starts) and 1 for a failure at run time.

Each row is a real process running the command's ``main()``. Rows that hide an optional package
(BLOCK) are a fresh ``python -m shmpool``, since what is missing matters at import; the others are
forked from one process that imported the command already (tests/_cli_forkserver.py): 45 fresh
interpreters cost about 16 s of CPU, 160 s of wall time on a loaded 2-core machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from _blocked_imports import blocker
from _cli_forkserver import CliForkServer
from shmpool.substrate.names import list_objects

NAME = "{name}"   # replaced by the test's instance name
TMP = "{tmp}"     # replaced by the test's tmp_path

# (id, argv, extra environment, exit status, text the one line must contain)
BAD = [
    ("log-level", ["--log-level", "BOGUS", "stats", NAME], {}, 2, "'BOGUS'"),
    ("log-level-after-command", ["stats", NAME, "--log-level", "loud"], {}, 2, "'loud'"),
    ("log-level-env", ["stats", NAME], {"SHMPOOL_LOG_LEVEL": "nope"}, 2, "SHMPOOL_LOG_LEVEL"),
    ("log-format", ["--log-format", "xml", "stats", NAME], {}, 2, "'xml'"),
    ("pool-growth-negative", ["serve", NAME, "--pool-growth", "-3"], {}, 2, "-3"),
    ("pool-growth-huge", ["serve", NAME, "--pool-growth", "100000"], {}, 2, "100000"),
    ("metrics-port-high", ["serve", NAME, "--metrics-port", "70000"], {}, 2, "70000"),
    ("metrics-port-negative", ["serve", NAME, "--metrics-port", "-1"], {}, 2, "-1"),
    ("metrics-port-word", ["serve", NAME, "--metrics-port", "http"], {}, 2, "'http'"),
    ("workers-negative", ["serve", NAME, "--workers", "-1"], {}, 2, "-1"),
    ("workers-huge", ["serve", NAME, "--workers", "100000"], {}, 2, "100000"),
    ("seed-negative", ["build", f"{TMP}/out", "--seed", "-1"], {}, 2, "-1"),
    ("seed-huge", ["build", f"{TMP}/out", "--seed", str(2**40)], {}, 2, str(2**40)),
    ("build-from-dir", ["build", f"{TMP}/out", "--from", TMP], {}, 2, f"{TMP} is a directory"),
    ("build-from-missing", ["build", f"{TMP}/out", "--from", f"{TMP}/nope.jsonl"], {}, 2, "nope.jsonl does not exist"),
    ("build-into-file", ["build", "/etc/passwd/x"], {}, 2, "/etc/passwd/x"),
    ("compress-cold-without-zstandard", ["serve", NAME, "--compress-cold"], {"BLOCK": "zstandard"}, 2,
     "zstandard"),
    ("stress-duration-zero", ["stress", NAME, "--duration", "0"], {}, 2, "'0'"),
    ("stress-crystallize-negative", ["stress", NAME, "--crystallize-every", "-1"], {}, 2, "'-1'"),
    ("stress-clients-word", ["stress", NAME, "--clients", "abc"], {}, 2, "'abc'"),
    ("stress-workers-zero", ["stress", NAME, "--workers", "0"], {}, 2, "got 0"),
    ("stress-out-file", ["stress", NAME, "--out", "/etc/passwd"], {}, 2, "/etc/passwd is not a directory"),
    ("memory-limit-fraction", ["serve", NAME, "--memory-limit", "0.5"], {}, 2, "'0.5'"),
    ("memory-limit-tiny", ["serve", NAME, "--memory-limit", "1KB"], {}, 2, "'1KB'"),
    ("memory-limit-unit", ["serve", NAME, "--memory-limit", "12XB"], {}, 2, "'12XB'"),
    ("memory-limit-env", ["serve", NAME], {"SHMPOOL_MEMORY_LIMIT": "lots"}, 2, "SHMPOOL_MEMORY_LIMIT='lots'"),
    ("workers-env", ["serve", NAME], {"SHMPOOL_WORKERS": "-2"}, 2, "SHMPOOL_WORKERS='-2'"),
    ("evict-env", ["serve", NAME], {"SHMPOOL_EVICT": "perhaps"}, 2, "SHMPOOL_EVICT='perhaps'"),
    ("data-dir-file", ["serve", NAME, "--data-dir", "/etc/passwd"], {}, 2, "/etc/passwd is not a directory"),
    ("data-dir-missing", ["serve", NAME, "--data-dir", f"{TMP}/none"], {}, 2, "none does not exist"),
    ("spill-dir-file", ["serve", NAME, "--spill-dir", "/etc/passwd"], {}, 2, "/etc/passwd is not a directory"),
    ("job-entry", ["serve", NAME, "--job", "nonsense"], {}, 2, "'nonsense'"),
    ("instance-name", ["serve", "bad/name"], {}, 2, "'bad/name'"),
    # The job allow-list, checked before the coordinator starts (the docs read-through found these
    # at exit 1, after a start: the Coordinator refused them).
    ("job-module-not-dotted-name", ["serve", NAME, "--job-module", "1abc"], {}, 2, "'1abc'"),
    ("job-modules-env", ["serve", NAME], {"SHMPOOL_JOB_MODULES": "a..b"}, 2, "a..b"),
    ("job-builtin-name", ["serve", NAME, "--job", "lookup=os:system"], {}, 2, "built-in job"),
    ("job-no-function", ["serve", NAME, "--job", "x=os:"], {}, 2, "os:"),
    ("metrics-addr-bad-port-0", ["serve", NAME, "--metrics-addr", "999.1.1.1", "--metrics-port", "0"], {}, 2,
     "999.1.1.1"),
    ("completion-shell", ["completion", "tcsh"], {}, 2, "'tcsh'"),
    ("no-command", [], {}, 2, "COMMAND"),
    ("stats-not-running", ["stats", NAME], {}, 1, "no coordinator '{name}' is running"),
    ("stats-json-not-running", ["stats", NAME, "--json"], {}, 1, "no coordinator '{name}' is running"),
    ("dump-not-running", ["dump", NAME], {}, 1, "no coordinator '{name}' is running"),
    ("health-not-running", ["health", NAME], {}, 1, "no coordinator '{name}' is running"),
    ("metrics-port-taken", ["serve", NAME, "--metrics-port", "{taken}"], {}, 1, "127.0.0.1:{taken}"),
    ("stress-without-rich", ["stress", NAME, "--duration", "1"], {"BLOCK": "rich"}, 1, "shmpool[cli]"),
    ("stats-tables-without-rich", ["stats", NAME], {"BLOCK": "rich"}, 1, "no coordinator"),
]


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _clean_environ() -> dict[str, str]:
    """The test's environment without the SHMPOOL_* defaults a developer may have set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SHMPOOL_") or k == "SHMPOOL_RUNTIME_DIR"}


@pytest.fixture(scope="module")
def forked_cli():
    with CliForkServer(_clean_environ()) as server:
        yield server


@pytest.mark.parametrize("case, argv, env, status, needle", BAD, ids=[row[0] for row in BAD])
def test_a_bad_input_is_one_line_on_stderr_and_the_right_exit_status(case, argv, env, status, needle,
                                                                     instance_name, tmp_path, taken_port, forked_cli):
    def fill(text: str) -> str:
        return text.format(name=instance_name, tmp=tmp_path, taken=taken_port)

    environ = _clean_environ()
    extra = dict(env)
    block = extra.pop("BLOCK", None)
    if block:
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [blocker(tmp_path, block),
                                                              environ.get("PYTHONPATH")]))
    environ.update(extra)
    if block:
        result = subprocess.run([sys.executable, "-m", "shmpool", *map(fill, argv)], capture_output=True,
                                text=True, timeout=60, env=environ, stdin=subprocess.DEVNULL)
    else:
        streams = tmp_path / "streams"
        streams.mkdir()
        result = subprocess.CompletedProcess(argv, *forked_cli.run([fill(a) for a in argv], environ, streams))
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    # One line and nothing else: no usage block, no start-up log (nothing was started).
    assert len(lines) == 1, result.stderr
    assert result.returncode == status, result.stderr
    assert fill(needle) in lines[0], lines[0]
    assert lines[0].startswith("shmpool"), lines[0]
    assert result.stdout == ""
    assert list_objects(instance_name) == ([], [])
    assert not (tmp_path / "out").exists()


def test_a_limit_too_small_for_every_file_fails_instead_of_serving_nothing(instance_name, sample_dir):
    result = subprocess.run([sys.executable, "-m", "shmpool", "serve", instance_name, "--workers", "0",
                             "--data-dir", str(sample_dir), "--memory-limit", "1MiB", "--no-mapped-regions"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "nothing to serve: all 14 region files were skipped" in last and "refused" in last, last
    assert "serving" not in result.stdout
    assert list_objects(instance_name) == ([], [])
