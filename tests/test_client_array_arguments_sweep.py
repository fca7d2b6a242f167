"""Spilled arguments against the allocation table's dead-owner sweep, in its worst order.

A client SIGKILLed while its job runs owns the job's spilled arguments until the coordinator's
supervision round settles it (every 0.1 s); the table's dead-owner sweep runs every second in the
coordinator and in any process whose allocation finds no room. Here the supervision round is
held back (the coordinator runs in the test process: its board's dead-client settling is made a
no-op) and the sweep is forced by hand, so the sweep always comes first: the blocks must stay
the job's, and another allocation of the same size must not land on them. The arguments are
lent to the board (RecordState.LENT): only the coordinator's settling of lent blocks, which
consults the board, frees them (shmpool/jobs/arg_spill.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

import _array_jobs as jobs
from _array_clients import submitting_client
import shmpool
from _introspect import job_board
from _waiting import stop_outside_locks, wait_for
from conftest import TESTS
from shmpool.coordinator import Coordinator
from shmpool.jobs.arg_spill import ArgumentsRef, settle_lent_arguments
from shmpool.jobs.jobs_layout import SlotState
from shmpool.jobs.spill import read_spill
from shmpool.substrate.layout import R, RecordState
from shmpool.substrate.names import list_objects

pytestmark = pytest.mark.usefixtures("user_jobs_importable")

MB = 2 ** 20
N = MB  # float64 elements: an 8 MiB argument


def _live(coord: Coordinator) -> int:
    return int(coord.stats()["live_allocations"])


@pytest.fixture
def served(make_name: Callable[[], str]) -> Iterator[tuple[Coordinator, str]]:
    """A coordinator with 2 workers running tests/_array_jobs.py; empty after its stop."""
    name = make_name()
    with Coordinator(name, workers=2, job_modules=["_array_jobs"]) as coord:
        baseline = _live(coord)
        yield coord, name
        board = job_board(coord)
        wait_for(lambda: coord.stats()["jobs"]["free"] == board.slot_count, what="every slot free")
        wait_for(lambda: _live(coord) == baseline, what=f"allocations back to {baseline}")
    assert list_objects(name) == ([], [])


def _running_arguments(coord: Coordinator) -> ArgumentsRef:
    board = job_board(coord)
    for slot in range(board.slot_count):
        ref = board.arguments(slot)
        if ref is not None and board.slot_row(slot).state in (SlotState.RUNNING, SlotState.ORPHANED):
            return ref
    raise AssertionError("no running job names spilled arguments")


def test_a_dead_clients_running_job_keeps_its_argument_through_a_sweep_before_supervision(
        served: tuple[Coordinator, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL the client while its job runs, sweep the table's dead owners before any supervision
    round, then fill a same-sized allocation with other bytes: the job still reads its argument
    exact, because lent blocks are no generic sweep's to free."""
    coord, name = served
    board = job_board(coord)
    inst = coord._inst
    assert inst is not None
    # Supervision paused: the dead client's job stays RUNNING, its arguments the dead client's.
    monkeypatch.setattr(board, "sweep_dead_clients", lambda: 0)
    gate = tmp_path / "gate"
    child = submitting_client(name, gate, N)
    assert child.stdout is not None and child.stdout.readline().strip() == "submitted"
    wait_for(lambda: Path(f"{gate}.pid").exists(), what="the job running")
    ref = _running_arguments(coord)
    assert int(inst.control.records[ref.record, R.STATE]) == RecordState.LENT
    child.kill()
    assert child.wait(30) == -signal.SIGKILL

    inst.table.reclaim_dead()  # the sweep, first: before any supervision round could settle
    handle = inst.table.handle_of(*ref)  # still live (InvalidHandle if the sweep freed it)
    filler = inst.table.allocate(N * 8)  # another process's allocation of the same size...
    try:
        assert (filler.pool, filler.first_block) != (handle.pool, handle.first_block)
        inst.handle_view(filler)[:] = b"\xff" * (N * 8)  # ...filled with other bytes (NaNs)
        gate.touch()
        out = Path(f"{gate}.out")
        wait_for(lambda: out.exists(), what="the orphaned job's answer")
        assert float(out.read_text()) == float(np.arange(N, dtype=np.float64).sum())
    finally:
        inst.table.free(filler)
    monkeypatch.undo()  # supervision resumes: the dead client's slot and channel are settled
    wait_for(lambda: coord.stats()["jobs"]["clients"] == 0, what="the dead client swept")


def test_lent_arguments_of_a_dead_client_survive_every_generic_sweep_until_settled(
        served: tuple[Coordinator, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same window seen from the table: a takeover's rebuild and the allocate path's sweep
    (an allocation that finds no room) leave lent blocks alone too; the coordinator's settling
    of lent blocks keeps them while a slot names them and frees them once the job is over."""
    coord, name = served
    board = job_board(coord)
    inst = coord._inst
    assert inst is not None
    baseline = _live(coord)
    monkeypatch.setattr(board, "sweep_dead_clients", lambda: 0)
    gate = tmp_path / "gate"
    child = submitting_client(name, gate, N)
    assert child.stdout is not None and child.stdout.readline().strip() == "submitted"
    wait_for(lambda: Path(f"{gate}.pid").exists(), what="the job running")
    ref = _running_arguments(coord)
    child.kill()
    child.wait(30)
    with inst.table._lock:  # what the next holder does after taking the lock from a dead one
        inst.table.rebuild_from_records()
        inst.table._reclaim_dead_locked()
    assert settle_lent_arguments(inst, board) == 0  # named by a running slot: kept
    inst.table.handle_of(*ref)
    assert _live(coord) == baseline + 1
    gate.touch()
    wait_for(lambda: Path(f"{gate}.out").exists(), what="the orphaned job's answer")
    assert float(Path(f"{gate}.out").read_text()) == float(np.arange(N, dtype=np.float64).sum())
    monkeypatch.undo()
    wait_for(lambda: _live(coord) == baseline, what="the orphan's argument freed after the job")


def test_a_client_sigkilled_between_allocate_and_submit_leaks_nothing_once_the_rounds_ran(
        served: tuple[Coordinator, str], tmp_path: Path) -> None:
    """Its arguments are lent but no slot names them: the generic sweep leaves them (it cannot
    tell), and the coordinator's settling of lent blocks frees them, with nothing run."""
    coord, name = served
    inst = coord._inst
    assert inst is not None
    baseline = _live(coord)
    gate = tmp_path / "gate"
    gate.touch()
    child = submitting_client(name, gate, N, "arguments.placed")
    assert child.wait(60) == -signal.SIGKILL
    assert child.stdout is not None and child.stdout.read() == ""  # it died before submitting
    wait_for(lambda: _live(coord) == baseline, what="the coordinator freed the unnamed lent blocks")
    assert not Path(f"{gate}.pid").exists()  # nothing ran
    with shmpool.connect(name) as client:
        assert client.submit(jobs.total, np.ones(MB)).result(30) == float(MB)


RESULT_CHILD = """
import sys
import numpy as np
import shmpool, _array_jobs
name, gate, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = shmpool.connect(name)
x = np.arange(n, dtype=np.float64)
future = client.submit(_array_jobs.gated_double, gate, x)
print("submitted", flush=True)
print(repr(float(future.result(120).sum())), flush=True)
client.close()
"""


def test_a_spilled_result_whose_worker_died_is_read_whole_after_a_sweep(
        make_name: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same shape for spilled results: the client is stopped (SIGSTOP) so it cannot read yet,
    the worker delivers a spilled result and is SIGKILLed at once (fault point spill.delivered),
    the table is swept and a same-sized allocation filled with other bytes; the client, resumed,
    reads its result exact. The blocks were handed to the client before the slot was delivered,
    so no sweep sees a dead owner in them (shmpool/jobs/spill.py)."""
    monkeypatch.setenv("SHMPOOL_FAULT", f"spill.delivered@{tmp_path / 'fire-once'}")
    (tmp_path / "fire-once").touch()
    name = make_name()
    with Coordinator(name, workers=2, job_modules=["_array_jobs"]) as coord:
        monkeypatch.delenv("SHMPOOL_FAULT")
        inst = coord._inst
        assert inst is not None
        baseline = _live(coord)
        gate = tmp_path / "gate"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
        child = subprocess.Popen([sys.executable, "-c", RESULT_CHILD, name, str(gate), str(N)], env=env, text=True,
                                 stdout=subprocess.PIPE)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "submitted"
            wait_for(lambda: Path(f"{gate}.pid").exists(), what="the job running")
            worker = int(Path(f"{gate}.pid").read_text())
            # The client cannot read its answer before the sweep (stopped outside the locks it takes).
            stop_outside_locks(child.pid, [job_board(coord).lock, inst.lock])
            gate.touch()
            wait_for(lambda: coord.stats()["jobs"]["worker_deaths"] == 1, what="the worker killed after delivering")
            assert not (tmp_path / "fire-once").exists()  # killed at spill.delivered, not elsewhere
            board = job_board(coord)
            done = [s for s in range(board.slot_count) if board.slot_row(s).state == SlotState.DONE]
            assert len(done) == 1
            spill = read_spill(board.v.slots_mv, done[0])
            assert spill is not None and int(inst.control.records[spill.record, R.OWNER_PID]) == child.pid
            assert worker != child.pid
            inst.table.reclaim_dead()  # the worker is dead: nothing of the result is its own any more
            filler = inst.table.allocate(spill.nbytes)
            try:
                inst.handle_view(filler)[:] = b"\xff" * spill.nbytes
                os.kill(child.pid, signal.SIGCONT)
                answer = child.stdout.readline().strip()
            finally:
                inst.table.free(filler)
            assert float(answer) == float((np.arange(N, dtype=np.float64) * 2).sum())
            assert child.wait(60) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(30)
        wait_for(lambda: _live(coord) == baseline, what="the result and the argument freed by the client")
    assert list_objects(name) == ([], [])
