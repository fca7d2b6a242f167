"""Each kind of shmpool process imports only what it uses, and lazy imports change no behaviour.

A test run starts hundreds of Python processes (coordinators, workers, CLI calls, clients), and
a user waits for each CLI call and each replacement of a crashed worker: their start is mostly
imports (numpy, loguru and its asyncio, the package's own modules). These tests pin what a
process must *not* import, by module name in ``sys.modules``, never by time: a regression shows
as a module that came back, whatever the machine's speed. They also check that what became lazy
behaves as before: ``from shmpool import X`` for every public name, and loguru's state
(shmpool disabled; a worker's sinks removed) whoever imports loguru first.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import posix_ipc
import pytest

from shmpool import Coordinator, connect
from shmpool.substrate.names import segment_name

ROOT = Path(__file__).resolve().parents[1]

# What a worker that only runs jobs on plain values never needs (loguru's import alone pulls in
# asyncio, multiprocessing and logging).
NOT_IN_A_WORKER = ["loguru", "asyncio", "multiprocessing", "logging", "shmpool.jobs.client",
                   "shmpool.data.region_builder", "shmpool.data.sample", "filelock", "shmpool.coordinator"]


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_shmpool_loads_only_the_package_until_a_name_is_used():
    modules = _modules_after("import shmpool")
    ours = {m for m in modules if m == "shmpool" or m.startswith("shmpool.")}
    # fork_safe: the locks of _log and _last_resort (stdlib only: os, threading, weakref).
    assert ours == {"shmpool", "shmpool._last_resort", "shmpool.substrate", "shmpool.substrate._log",
                    "shmpool.substrate.fork_safe"}
    assert not {"numpy", "loguru", "msgpack", "asyncio"} & modules


def test_a_worker_module_imports_neither_loguru_nor_the_client_nor_the_coordinator():
    modules = _modules_after("import shmpool.workers.worker")
    assert not set(NOT_IN_A_WORKER) & modules


def test_cli_help_and_argument_errors_import_neither_numpy_nor_loguru():
    code = ("from shmpool.coordinator.cli import main\n"
            "for argv in (['--help'], ['serve', 'bad name!']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit:\n"
            "        pass")
    modules = _modules_after(code)
    assert not {"numpy", "loguru", "asyncio", "shmpool.coordinator.coordinator", "shmpool.jobs.jobboard"} & modules


def test_no_module_imports_loguru_itself_but_the_stand_in():
    # A module with its own `from loguru import logger` would bring the ~80 ms import back into
    # every process that imports it: they log through shmpool.substrate._log. Type-only imports
    # (under `if TYPE_CHECKING:`, indented) cost nothing at run time.
    wrong = []
    for folder in ("shmpool", "coordinator", "workers"):
        for path in sorted((ROOT / folder).rglob("*.py*")):
            if path.suffix not in (".py", ".pyx") or path.name == "_log.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if line.startswith(("import loguru", "from loguru")):
                    wrong.append(f"{path.relative_to(ROOT)}:{number}: {line}")
    assert wrong == [], "\n".join(wrong)


def test_every_public_name_loads_on_first_use_and_matches_the_type_checkers_view():
    import shmpool

    tree = ast.parse((ROOT / "shmpool" / "__init__.py").read_text())
    typed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom)
                typed.update(alias.asname or alias.name for alias in stmt.names)
    lazy = set(shmpool._HOME)
    assert typed == lazy, "the TYPE_CHECKING imports and _HOMES name different things"
    assert set(shmpool.__all__) == lazy | {"show_warnings"}
    modules = _modules_after("from shmpool import *\nimport shmpool\nassert all(n in globals() for n in shmpool.__all__)")
    assert "shmpool.coordinator.coordinator" in modules  # `import *` loaded every name
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        shmpool.nothing_here  # noqa: B018


@pytest.mark.parametrize("first", ["loguru", "shmpool"])
def test_shmpool_starts_disabled_in_loguru_whoever_imports_loguru_first(first):
    # A record from a shmpool module: disabled until enabled, whether loguru was imported before
    # shmpool or only afterwards (then shmpool's records before it are dropped, not queued).
    code = f"""
import sys
if {first!r} == "loguru":
    from loguru import logger
    import shmpool
else:
    import shmpool
    from shmpool.substrate._log import logger as stand_in
    exec('logger.warning("dropped")', {{"__name__": "shmpool.probe", "logger": stand_in}})
    assert "loguru" not in sys.modules
    from loguru import logger
from shmpool.substrate._log import logger as stand_in
seen = []
logger.remove()
logger.add(lambda message: seen.append(message.record["message"]))
emit = lambda text: exec(f"logger.warning({{text!r}})", {{"__name__": "shmpool.probe", "logger": stand_in}})
emit("disabled")
logger.enable("shmpool")
emit("enabled")
logger.disable("shmpool")
emit("disabled again")
print(seen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "['enabled']"


@pytest.mark.usefixtures("user_jobs_importable")
def test_a_serving_worker_has_not_imported_loguru_and_keeps_a_jobs_loguru_records_silent(instance_name, capfd):
    marker = f"record-of-a-job-{instance_name}"
    with Coordinator(instance_name, workers=1, job_modules=["_start_imports_jobs"]):
        with connect(instance_name) as client:
            assert client.submit("_start_imports_jobs:loaded", NOT_IN_A_WORKER).result(timeout=60) == []
            # A job's own loguru import finds the worker's state as an eager import left it:
            # no sink (SHMPOOL_LOG_LEVEL unset), so its record goes nowhere.
            assert client.submit("_start_imports_jobs:log_through_loguru", marker).result(timeout=60) is True
            assert client.submit("_start_imports_jobs:loaded", ["loguru"]).result(timeout=60) == ["loguru"]
    assert marker not in capfd.readouterr().err


def test_a_cli_command_that_logs_nothing_skips_loguru_and_one_that_logs_still_prints_its_record(instance_name):
    quiet = f"from shmpool.coordinator.cli import main\nassert main(['cleanup', {instance_name!r}]) == 0"
    assert "loguru" not in _modules_after(quiet)
    # A crashed instance's leftover: cleanup removes it and logs that at INFO, which must reach
    # the CLI's stderr sink in the CLI's format (loguru imported by that record, then configured).
    segment = posix_ipc.SharedMemory(segment_name(instance_name, "control"), posix_ipc.O_CREX, mode=0o600, size=4096)
    segment.close_fd()
    result = subprocess.run([sys.executable, "-m", "shmpool", "cleanup", instance_name], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert f"| INFO    | cleanup of instance '{instance_name}' removed 1 objects" in result.stderr


def test_a_coordinator_that_never_warns_has_not_imported_loguru(instance_name):
    # Its warnings still reach stderr (tests/test_warnings_on_stderr.py): the first one imports
    # loguru and sets up the sink. A start and a stop that warn of nothing need neither.
    code = (f"import shmpool\nwith shmpool.Coordinator({instance_name!r}, workers=1):\n"
            "    pass")
    modules = _modules_after(code)
    assert "shmpool.coordinator.coordinator" in modules
    assert "loguru" not in modules


def test_a_coordinator_left_running_is_stopped_at_exit_with_its_records_when_loguru_came_later(instance_name):
    # loguru removes every sink in an exit hook registered at its import. Imported after the
    # coordinator's start (which registered the hook that stops it at exit), it would run first
    # and swallow the stop's records, unless shmpool's hook moves behind it: the stop's INFO line
    # must reach the sink the program added.
    code = f"""
import sys, shmpool
shmpool.Coordinator({instance_name!r}, workers=0).start()  # never stopped: the exit hook stops it
assert "loguru" not in sys.modules
from loguru import logger
logger.remove()
logger.add(sys.stdout, level="INFO", format="{{message}}")
logger.enable("shmpool")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert f"stopping coordinator '{instance_name}' at interpreter exit" in result.stdout, result.stdout
    assert f"instance '{instance_name}' unlinked" in result.stdout, result.stdout
