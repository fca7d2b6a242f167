"""Names removed from /dev/shm under a serving coordinator (systemd-logind's RemoveIPC=yes).

logind deletes every /dev/shm name of a user when the user's last session ends, semaphores
(``sem.*``) included, while the processes that mapped them run on. The coordinator must notice,
say why and what to do in an ERROR, and stop within seconds (docs/operations.md, "Names removed
under a running instance"); until it has stopped, health, cleanup, a new coordinator, attach and
connect all say the same thing. Each test serves with a real ``shmpool serve`` subprocess and
removes its names with plain ``os.unlink``, as logind does.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from _cli_command import Cli
from _removed_names import remove_names

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.errors import AttachError, InstanceExists
from shmpool.substrate.names import list_objects
from shmpool.substrate._proc import child_pids
from shmpool.substrate.trust import SHM_DIR

CLI = [sys.executable, "-m", "shmpool"]
# Only catches a hang (tests/README.md): the coordinator notices within a reaper round (20 ms) or
# a full check (1 s) and stops within about a second; this turns "never" into a failure.
STOP_DEADLINE = 30.0
Serve = Callable[[str], tuple[subprocess.Popen[str], Path]]


@pytest.fixture
def serve(sample_dir: Path, tmp_path: Path) -> Iterator[Serve]:
    """serve(name) -> (the `shmpool serve` process, its log file); whatever is left is killed after the test."""
    started: list[subprocess.Popen[str]] = []

    def start(name: str) -> tuple[subprocess.Popen[str], Path]:
        log = tmp_path / f"serve-{len(started)}.log"
        proc = _serve(name, sample_dir, log)
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _serve(name: str, sample_dir: Path, log: Path, *, workers: int = 1) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*CLI, "serve", name, "--workers", str(workers), "--data-dir", str(sample_dir),
                             "--memory-limit", "100MiB"],
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = proc.stdout
        assert out is not None
        if select.select([out], [], [], 0.1)[0] and "serving" in out.readline():
            return proc
        assert proc.poll() is None, f"serve exited with {proc.returncode}: {log.read_text()}"
    proc.kill()
    raise AssertionError("serve did not print its ready line within 60 s")


def _wait_exit(proc: subprocess.Popen[str], log: Path) -> int:
    try:
        return proc.wait(STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"the coordinator did not stop within {STOP_DEADLINE} s of losing its names:\n"
                    f"{log.read_text()[-3000:]}")


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _assert_names_the_cause(text: str) -> None:
    assert "RemoveIPC" in text and "logind.conf" in text, text
    assert "system user" in text, text


def test_coordinator_stops_with_an_error_naming_removeipc_when_all_its_names_are_removed(instance_name: str, serve: Serve) -> None:
    proc, log = serve(instance_name)
    workers = child_pids(proc.pid)
    assert len(workers) == 1
    removed = remove_names(instance_name)
    assert any(e.startswith("sem.") for e in removed) and any(e.endswith(".control") for e in removed)
    t0 = time.monotonic()
    code = _wait_exit(proc, log)
    took = time.monotonic() - t0
    text = log.read_text()
    assert code == 1, text  # a failure, so that a supervisor (systemd Restart=on-failure) starts it again
    errors = [line for line in text.splitlines() if "ERROR" in line and "removed" in line]
    assert errors, text
    _assert_names_the_cause(errors[0])
    assert "/shmpool." in errors[0]  # which names went
    assert all(_gone(w) for w in workers)
    assert list_objects(instance_name) == ([], [])
    print(f"stopped {took:.2f} s after its {len(removed)} names were removed")


def test_a_worker_killed_after_the_names_went_is_not_restarted_into_a_loop(instance_name: str, serve: Serve) -> None:
    proc, log = serve(instance_name)
    [worker] = child_pids(proc.pid)
    remove_names(instance_name)
    os.kill(worker, signal.SIGKILL)
    assert _wait_exit(proc, log) == 1
    text = log.read_text()
    # A replacement could only fail to attach (exit status 3), again and again with back-off.
    assert "exited with status 3" not in text and "could not attach" not in text, text
    assert list_objects(instance_name) == ([], [])


def test_only_the_semaphores_removed_is_noticed_too(instance_name: str, serve: Serve) -> None:
    proc, log = serve(instance_name)
    for entry in os.listdir(SHM_DIR):
        if entry.startswith(f"sem.shmpool.{instance_name}."):
            os.unlink(SHM_DIR / entry)
    assert _wait_exit(proc, log) == 1
    text = log.read_text()
    assert "sem.shmpool" in text or f"/shmpool.{instance_name}.lock" in text, text
    _assert_names_the_cause(text)
    assert list_objects(instance_name) == ([], [])  # the segments still there were removed at stop


@pytest.mark.parametrize("which", ["all", "semaphores"])
def test_health_cleanup_start_attach_and_connect_agree_while_the_coordinator_has_not_noticed(
        instance_name: str, serve: Serve, which: str, cli: Cli) -> None:
    """The coordinator is stopped (SIGSTOP) so that it cannot notice yet: what does everyone else see?"""
    proc, log = serve(instance_name)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        if which == "all":
            remove_names(instance_name)
        else:
            for entry in os.listdir(SHM_DIR):
                if entry.startswith(f"sem.shmpool.{instance_name}."):
                    os.unlink(SHM_DIR / entry)
        pid = f"pid {proc.pid}"
        health = cli("health", instance_name)
        assert health.returncode == 1 and pid in health.stderr and "removed" in health.stderr, health
        assert "no coordinator" not in health.stderr
        _assert_names_the_cause(health.stderr)
        cleanup = cli("cleanup", instance_name)
        assert cleanup.returncode == 1 and pid in cleanup.stderr and "removed" in cleanup.stderr, cleanup
        _assert_names_the_cause(cleanup.stderr)
        with pytest.raises(InstanceExists) as started:
            Coordinator(instance_name, workers=0).start()
        assert getattr(started.value, "owner_pid") == proc.pid and "removed" in str(started.value)
        _assert_names_the_cause(str(started.value))
        if which == "all":  # with only its semaphore gone, the instance still serves until it stops
            for connect in (shmpool.attach, shmpool.connect):
                with pytest.raises(AttachError) as attached:
                    connect(instance_name)
                reason = str(getattr(attached.value, "reason"))
                assert pid in reason and "removed" in reason, attached.value
                _assert_names_the_cause(reason)
        # None of them removed, recreated or half-created anything.
        assert list_objects(instance_name)[1] == [] and bool(list_objects(instance_name)[0]) == (which != "all")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert _wait_exit(proc, log) == 1
    assert list_objects(instance_name) == ([], [])


def test_a_coordinator_in_this_process_stops_itself_and_says_why(instance_name: str) -> None:
    from loguru import logger

    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(m.record["message"]), level="ERROR")
    logger.enable("shmpool")
    try:
        coord = Coordinator(instance_name, workers=0).start()
        try:
            remove_names(instance_name)
            deadline = time.monotonic() + STOP_DEADLINE
            while coord.running and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not coord.running
            assert coord.names_lost is not None and ".control" in coord.names_lost.describe()
        finally:
            coord.stop()  # a no-op once it stopped itself
    finally:
        logger.remove(sink)
        logger.disable("shmpool")  # the library's default
    assert errors, "no ERROR was logged"
    _assert_names_the_cause(errors[0])
    with pytest.raises(RuntimeError):
        coord.reclaim()
    assert list_objects(instance_name) == ([], [])
    # The name is free again: a new coordinator starts under it.
    with Coordinator(instance_name, workers=0) as again:
        assert again.running


def test_a_growth_segment_made_after_start_goes_too_when_only_the_semaphores_were_removed(
        instance_name: str, tmp_path: Path) -> None:
    from shmpool.substrate.instance import PoolSpec

    with Coordinator(instance_name, data_dir=tmp_path, workers=0, pools=(PoolSpec(4096, 64),)) as coord:
        for dim in (1, 2):  # 200 KiB each in a 256 KiB pool: the second one grows the pool
            proto = coord.create_proto_dimension(dim, f"big{dim}")
            proto.add_layer(1, b"x" * 200 * 1024)
            coord.crystallize(dim)
        segments, _ = list_objects(instance_name)
        assert any(s.endswith(".pool1") for s in segments), segments  # made after the watch started
        for entry in os.listdir(SHM_DIR):
            if entry.startswith(f"sem.shmpool.{instance_name}."):
                os.unlink(SHM_DIR / entry)
        deadline = time.monotonic() + STOP_DEADLINE
        while coord.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not coord.running and coord.names_lost is not None
    assert list_objects(instance_name) == ([], [])
