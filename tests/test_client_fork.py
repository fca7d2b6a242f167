"""A Client inherited through fork() (issue 24): refused in the child, the parent untouched.

The child of a connected process gets a copy of the Client but not its completion thread, and
the board channel it names is its parent's. Used there, it would post requests whose answers the
parent's completion thread consumes (the child waits for ever), and its close() would hand the
parent's channel to the next ``connect``. So an inherited Client refuses every use with
ClientClosed saying to connect again in the child, and closing or dropping it there releases
nothing. Both cases: the parent keeps working meanwhile, and the parent has exited.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest
from _waiting import wait_for

import _client_fork_children as children
from shmpool.coordinator import Coordinator
from shmpool.substrate._proc import is_alive

CHANNELS = 4  # few, so that a released-by-mistake channel is the next connect's
SLOTS = 16
REFUSED = ("submit", "call", "map")


def _reports(out_dir, *who: str) -> list[dict]:
    for name in who:
        wait_for(lambda: (out_dir / f"{name}.json").exists(), 90, f"{name}'s report")
    reports = [json.loads((out_dir / f"{name}.json").read_text()) for name in who]
    for report in reports:
        assert "crash" not in report, report["crash"]
    return reports


def _assert_child_refused_then_worked_alone(child: dict, worker_pids: list[int]) -> None:
    for use in REFUSED:
        seen = child[use]
        assert "ClientClosed" in seen["mro"] and "ShmPoolError" in seen["mro"], (use, seen)
        assert "fork" in seen["message"] and "connect" in seen["message"], (use, seen)
        assert seen["seconds"] < children.TYPED_WITHIN, (use, seen)  # refused, not timed out
    assert child["own_first"] in worker_pids
    # Closing and dropping the inherited client released nothing: the new channel stays ours.
    assert child["own_channels_before"] and child["own_channels_after"] == child["own_channels_before"]
    assert child["own_submits"] == [i * i for i in range(20)]
    assert child["own_calls"] == [i ** 3 for i in range(20)]


def _assert_board_settles(coord: Coordinator) -> None:
    board = coord._board
    wait_for(lambda: board.counts()["clients"] == 0 and board.counts()["free"] == SLOTS, 20,
             "every channel and slot back")
    counts = board.counts()
    assert counts["submitted"] == counts["completed"] + counts["failed"] + counts["cancelled"], counts


@pytest.fixture
def coord(instance_name):
    with Coordinator(instance_name, workers=2, job_slots=SLOTS, max_clients=CHANNELS) as c:
        yield c


def test_a_forked_child_is_refused_and_its_parent_keeps_its_channel_and_results(coord, tmp_path):
    ctx = mp.get_context("spawn")
    parent = ctx.Process(target=children.parent, args=(coord.name, str(tmp_path), False))
    parent.start()
    try:
        parent_report, child = _reports(tmp_path, "parent", "child")
    finally:
        parent.join(60)
    assert parent.exitcode == 0
    workers = coord._pool.pids()
    _assert_child_refused_then_worked_alone(child, workers)
    assert parent_report["child_status"] == 0
    assert parent_report["reader_row_kept"], "the child's drop of the inherited client released our reader row"
    # The parent lost nothing: every answer reached it, its channel is the one it had.
    assert parent_report["during"] == [i * i for i in range(50)]
    assert parent_report["after"] == [i ** 3 for i in range(50)]
    assert parent_report["after_calls"] == [i * i for i in range(20)]
    assert parent_report["channels_after"][0] == parent_report["channels_before"][0]
    assert parent_report["other_ping"] in workers
    assert parent_report["shutdown_returned"], "the parent's shutdown(wait=True) hung"
    _assert_board_settles(coord)


def test_a_forked_child_is_refused_after_its_parent_exited(coord, tmp_path):
    ctx = mp.get_context("spawn")
    parent = ctx.Process(target=children.parent, args=(coord.name, str(tmp_path), True))
    parent.start()
    (parent_report,) = _reports(tmp_path, "parent")
    # Not join(): the child inherited the parent's sentinel pipe, which stays open while it lives.
    wait_for(lambda: not is_alive(parent.pid), 30, "the parent's exit")
    (tmp_path / "go").touch()  # the parent is gone: the child goes on as an orphan
    (child,) = _reports(tmp_path, "child")
    parent.join(30)
    assert parent.exitcode == 0
    _assert_child_refused_then_worked_alone(child, coord._pool.pids())
    wait_for(lambda: not os.path.exists(f"/proc/{child['pid']}"), 30, "the child's exit")
    _assert_board_settles(coord)
