"""Kept spilled arguments (tests/test_client_array_arguments_kept.py) across deaths in their windows.

A worker whose job kept a view of its spilled argument takes the blocks over (still lent, now its
own), marks the slot (ARG_KEPT) and only then answers (workers/kept_arguments.py). Deaths are
injected at the named points of shmpool/substrate/_faults.py, which random kills cannot hit: the
worker SIGKILLed after taking the blocks over (``arguments.taken_over``), after marking
(``arguments.kept``), after delivering the marked answer (the core's ``finish.delivered``), and
the client SIGKILLed while a kept answer waits unread in its ring, or while a worker that took the
blocks over is stopped before answering (the coordinator's adoption of the orphan must leave them
to that worker). Each test checks the bytes a kept view reads after the client's next arguments
reused freed memory, and ends with every slot FREE, no channel, the allocations at their baseline
and nothing of the instance in /dev/shm. Deadlines in wait_for only catch hangs.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import _kept_jobs as jobs
import shmpool
from _introspect import job_board
from _waiting import stop_outside_locks, wait_for
from _kept_checks import WAIT, assert_board_whole, live_allocations
from conftest import TESTS
from shmpool.coordinator import Coordinator
from shmpool.jobs.arg_spill import BOARD_OWNER, adopt_arguments
from shmpool.jobs.jobs_layout import SlotState
from shmpool.substrate.layout import R
from shmpool.substrate.names import list_objects

pytestmark = pytest.mark.usefixtures("user_jobs_importable")

MB = 2 ** 20
N = MB  # float64 elements: 8 MiB arguments


def _deaths(coord: Coordinator) -> int:
    return int(coord.stats()["jobs"]["worker_deaths"])


def _sha(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


@pytest.fixture
def serve(make_name: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str | None], tuple[Coordinator, str, int]]]:
    """Start a coordinator with one worker running tests/_kept_jobs.py, its workers (not their
    replacements) armed with a fault spec; checks the board whole and /dev/shm empty after."""
    started: list[tuple[Coordinator, str, int]] = []

    def start(fault: str | None) -> tuple[Coordinator, str, int]:
        name = make_name()
        if fault:
            monkeypatch.setenv("SHMPOOL_FAULT", fault)
        coord = Coordinator(name, workers=1, job_modules=["_kept_jobs"])
        coord.start()
        monkeypatch.delenv("SHMPOOL_FAULT", raising=False)
        started.append((coord, name, live_allocations(coord)))
        return started[-1]

    yield start
    for coord, name, baseline in started:
        try:
            assert_board_whole(coord, baseline)
        finally:
            coord.stop()
        assert list_objects(name) == ([], [])


def reuse_freed_blocks(client: Any, rounds: int = 3) -> None:
    """Arguments of the same size and other bytes, which land on freed blocks first."""
    for k in range(rounds):
        filler = np.full(N, 1000.0 + k)
        assert client.submit(jobs.total, filler).result(60) == float(filler.sum())


def _read_back_and_forget(coord: Coordinator, client: Any, key: str, x: np.ndarray, pid: int | None = None) -> None:
    """After the memory was reused: the kept view reads ``x`` exact; once forgotten, it is freed."""
    reuse_freed_blocks(client)
    got_pid, digest = client.submit(jobs.digest, key).result(60)
    assert digest == _sha(x)
    if pid is not None:
        assert got_pid == pid
    client.submit(jobs.forget, key).result(60)


@pytest.mark.parametrize("point", ["arguments.taken_over", "arguments.kept"])
def test_a_worker_killed_after_taking_kept_arguments_over_leaves_them_to_the_requeued_run(
        serve: Callable[[str | None], tuple[Coordinator, str, int]], tmp_path: Path, point: str) -> None:
    """The worker dies owning the blocks, before answering (marked or not): the slot still names
    them, so no settling frees them; the requeued run in the replacement worker reads them exact,
    keeps them in turn, and its answer frees nothing; forgotten, they are freed."""
    token = tmp_path / "fire-once"
    token.touch()
    coord, name, baseline = serve(f"{point}@{token}")
    x = np.arange(N, dtype=np.float64)
    with shmpool.connect(name) as client:
        pid = client.submit(jobs.keep, "a", x).result(60)
        assert not token.exists() and _deaths(coord) == 1  # killed at the point, the job requeued
        assert live_allocations(coord) == baseline + 1
        _read_back_and_forget(coord, client, "a", x, pid)
        wait_for(lambda: live_allocations(coord) == baseline, what="the kept argument freed once forgotten", seconds=WAIT)


def test_a_worker_killed_after_marking_answers_through_a_requeued_run_that_keeps_nothing(
        serve: Callable[[str | None], tuple[Coordinator, str, int]], tmp_path: Path) -> None:
    """The mark dies with its worker (the slot leaving it zeroes ARG_KEPT): a requeued run that
    keeps nothing answers, and its reader frees the argument with the answer, as for any job."""
    token = tmp_path / "fire-once"
    token.touch()
    coord, name, baseline = serve(f"arguments.kept@{token}")
    x = np.arange(N, dtype=np.float64)
    with shmpool.connect(name) as client:
        assert client.submit(jobs.keep_unless_requeued, str(tmp_path / "ran"), "a", x).result(60) is False
        assert not token.exists() and _deaths(coord) == 1
        assert live_allocations(coord) == baseline  # freed by the client with the answer


def test_a_worker_killed_after_delivering_a_kept_answer_leaks_nothing(
        serve: Callable[[str | None], tuple[Coordinator, str, int]], tmp_path: Path) -> None:
    """Killed right after the marked answer is in the client's ring: the client frees nothing (the
    mark), the blocks are lent blocks of a dead owner, and the coordinator frees them once the
    slot is released; the replacement worker serves on."""
    token = tmp_path / "fire-once"  # made only before the keeping job: earlier finishes pass
    coord, name, baseline = serve(f"finish.delivered@{token}")
    x = np.arange(N, dtype=np.float64)
    with shmpool.connect(name) as client:
        assert client.submit(jobs.total, x).result(60) == float(x.sum())
        token.touch()
        pid = client.submit(jobs.keep, "a", x).result(60)
        wait_for(lambda: _deaths(coord) == 1, what="the worker killed after delivering", seconds=WAIT)
        assert not token.exists()  # killed at that point, not elsewhere
        wait_for(lambda: live_allocations(coord) == baseline, what="the dead worker's kept argument freed by the coordinator", seconds=WAIT)
        reuse_freed_blocks(client)
        assert client.submit(jobs.forget, "a").result(60) != pid  # a replacement, holding nothing


CHILD = """
import sys, time
import numpy as np
import shmpool, _kept_jobs
name, gate, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = shmpool.connect(name)
future = client.submit(_kept_jobs.keep_gated, gate, key, np.arange(n, dtype=np.float64))
print("submitted", flush=True)
time.sleep(600)
"""


def _client_child(name: str, gate: Path, key: str, script: str = CHILD) -> subprocess.Popen[str]:
    """A client process running ``script`` (no fault armed): it submits, says so, and waits."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    env.pop("SHMPOOL_FAULT", None)
    return subprocess.Popen([sys.executable, "-c", script, name, str(gate), key, str(N)], env=env, text=True,
                            stdout=subprocess.PIPE)


def test_a_client_killed_with_a_kept_answer_unread_leaves_the_argument_to_the_worker(
        serve: Callable[[str | None], tuple[Coordinator, str, int]], tmp_path: Path) -> None:
    """The client is stopped, its job keeps its argument and answers into the client's ring, the
    client is SIGKILLed: settling its finished slot frees nothing the worker holds; the kept view
    reads the original bytes after another client reused the memory."""
    coord, name, baseline = serve(None)
    gate = tmp_path / "gate"
    child = _client_child(name, gate, "d")
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "submitted"
        wait_for(lambda: Path(f"{gate}.pid").exists(), what="the job running", seconds=WAIT)
        board = job_board(coord)
        assert coord._inst is not None
        stop_outside_locks(child.pid, [board.lock, coord._inst.lock])  # it cannot read its answer
        gate.touch()
        wait_for(lambda: any(board.slot_row(s).state == SlotState.DONE and board.slot_row(s).arg_kept
                             for s in range(board.slot_count)), what="the kept answer in the client's ring", seconds=WAIT)
        child.kill()
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    wait_for(lambda: coord.stats()["jobs"]["clients"] == 0, what="the dead client settled", seconds=WAIT)
    assert live_allocations(coord) == baseline + 1  # still the worker's
    with shmpool.connect(name) as client:
        _read_back_and_forget(coord, client, "d", np.arange(N, dtype=np.float64))
        wait_for(lambda: live_allocations(coord) == baseline, what="the kept argument freed once forgotten", seconds=WAIT)


def test_an_orphans_adoption_leaves_arguments_its_worker_took_over(
        serve: Callable[[str | None], tuple[Coordinator, str, int]], tmp_path: Path) -> None:
    """The worker took the blocks over and marked them, and is stopped before answering; its
    client is SIGKILLed and the coordinator orphans the job and adopts its arguments: blocks a
    live worker owns stay that worker's. Resumed, the worker finishes the orphan without
    freeing them, and the kept view reads the original bytes after reuse."""
    token = tmp_path / "fire-once"
    token.touch()
    coord, name, baseline = serve(f"arguments.kept:stop@{token}")
    inst = coord._inst
    assert inst is not None
    gate = tmp_path / "gate"
    gate.touch()  # the job keeps at once
    child = _client_child(name, gate, "e")
    worker = 0
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "submitted"
        wait_for(lambda: not token.exists(), what="the worker stopped after taking the argument over", seconds=WAIT)
        worker = int(Path(f"{gate}.pid").read_text())
        board = job_board(coord)
        running = [s for s in range(board.slot_count) if board.slot_row(s).state == SlotState.RUNNING]
        assert len(running) == 1
        ref = board.arguments(running[0])
        assert ref is not None and int(inst.control.records[ref.record, R.OWNER_PID]) == worker
        child.kill()
        assert child.wait(30) == -signal.SIGKILL
        wait_for(lambda: board.slot_row(running[0]).state == SlotState.ORPHANED, what="the job orphaned", seconds=WAIT)
        wait_for(lambda: coord.stats()["jobs"]["clients"] == 0, what="the dead client settled", seconds=WAIT)
        wait_for(lambda: not board.orphaned_args, what="the coordinator's adoption round", seconds=WAIT)
        coordinator = inst.coordinator()
        adopt_arguments(inst, ref, coordinator)  # as that round does, once more: no race
        assert int(inst.control.records[ref.record, R.OWNER_PID]) == worker  # not adopted
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        if worker:
            os.kill(worker, signal.SIGCONT)
    wait_for(lambda: coord.stats()["jobs"]["free"] == job_board(coord).slot_count, what="the orphan finished", seconds=WAIT)
    assert live_allocations(coord) == baseline + 1
    with shmpool.connect(name) as client:
        _read_back_and_forget(coord, client, "e", np.arange(N, dtype=np.float64), worker)
        wait_for(lambda: live_allocations(coord) == baseline, what="the kept argument freed once forgotten", seconds=WAIT)


def test_a_worker_that_exits_holding_a_kept_argument_leaves_it_to_the_coordinator(
        serve: Callable[[str | None], tuple[Coordinator, str, int]]) -> None:
    """SIGTERM ends the worker cleanly while its module still holds the view: it does not free
    blocks a view still points at (code may run at its interpreter's exit), and once it is
    gone the coordinator's settling frees them; the replacement serves on."""
    coord, name, baseline = serve(None)
    x = np.arange(N, dtype=np.float64)
    with shmpool.connect(name) as client:
        pid = client.submit(jobs.keep, "a", x).result(60)
        assert live_allocations(coord) == baseline + 1
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: live_allocations(coord) == baseline, what="the exited worker's kept argument freed by the coordinator", seconds=WAIT)
        assert client.submit(jobs.total, x).result(60) == float(x.sum())


def test_a_worker_killed_for_its_deadline_after_marking_leaves_the_argument_to_the_client(
        serve: Callable[[str | None], tuple[Coordinator, str, int]], tmp_path: Path) -> None:
    """The worker took the argument over and marked it, and stops there (SIGSTOP) past the job's
    deadline: the supervisor kills it and answers JobTimeout, zeroing the mark as the slot
    leaves the worker, so the client frees the argument with that answer."""
    token = tmp_path / "fire-once"
    token.touch()
    coord, name, baseline = serve(f"arguments.kept:stop@{token}")
    x = np.arange(N, dtype=np.float64)
    with shmpool.connect(name) as client:
        future = client.submit(jobs.keep, "t", x, job_timeout=1.0)
        with pytest.raises(shmpool.errors.JobTimeout) as timed_out:
            future.result(60)
        # Named from the request's header: its spilled argument is not the supervisor's to decode.
        assert timed_out.value.job.endswith(":keep") and timed_out.value.timeout == 1.0
        assert not token.exists()  # stopped at the point, then killed (not counted as a death)
        assert live_allocations(coord) == baseline  # freed by the client with the JobTimeout answer
        assert client.submit(jobs.total, x).result(60) == float(x.sum())


ORPHAN_CHILD = """
import sys, time
import numpy as np
import shmpool, _kept_jobs
name, gate, n = sys.argv[1], sys.argv[2], int(sys.argv[4])
client = shmpool.connect(name)
future = client.submit(_kept_jobs.total_gated, gate, np.arange(n, dtype=np.float64))
print("submitted", flush=True)
time.sleep(600)
"""


def test_a_worker_killed_between_finishing_an_adopted_orphan_and_freeing_its_argument_leaks_nothing(
        serve: Callable[[str | None], tuple[Coordinator, str, int]], tmp_path: Path) -> None:
    """The client dies while its job runs: the job is orphaned and the coordinator adopts its
    arguments (so that the dead client's reclaim leaves them to the worker). The worker finishes
    the orphan (its slot freed) and is SIGKILLed before it frees them (the core's
    ``finish.delivered``, which an orphan's finish passes too). Found by scripts/chaos.py under
    load: one 32 KiB allocation left, lent and owned by the coordinator, which adopted it and
    which nothing frees. Adopted blocks belong to no process now (arg_spill.BOARD_OWNER), so the
    coordinator's settling frees them once no slot names them."""
    token = tmp_path / "fire-once"  # made once the orphan is adopted: earlier finishes pass
    coord, name, baseline = serve(f"finish.delivered@{token}")
    inst = coord._inst
    assert inst is not None
    gate = tmp_path / "gate"
    child = _client_child(name, gate, "unused", ORPHAN_CHILD)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "submitted"
        wait_for(lambda: Path(f"{gate}.pid").exists(), what="the job running", seconds=WAIT)
        board = job_board(coord)
        running = [s for s in range(board.slot_count) if board.slot_row(s).state == SlotState.RUNNING]
        assert len(running) == 1
        ref = board.arguments(running[0])
        assert ref is not None
        child.kill()
        assert child.wait(30) == -signal.SIGKILL
        wait_for(lambda: int(inst.control.records[ref.record, R.OWNER_PID]) == BOARD_OWNER[0],
                 what="the coordinator's adoption of the orphan's argument", seconds=WAIT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    token.touch()
    gate.touch()  # the orphan finishes; its worker dies right after
    wait_for(lambda: _deaths(coord) == 1, what="the worker killed after finishing the orphan", seconds=WAIT)
    assert not token.exists()  # killed at that point, not elsewhere
    wait_for(lambda: live_allocations(coord) == baseline, what="the adopted argument freed by the coordinator",
             seconds=WAIT)
