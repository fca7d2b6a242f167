"""A Reader, its snapshots and its contexts inherited through fork() (issue 24, "Never a wrong byte").

A child forked after ``attach`` gets a reader row of its own, holding the very generations it
inherited, so its contexts keep their bytes whatever its parent does (exit, let go, close); and
the parent's row and pins are untouched by anything the child does. Each scenario runs while the
coordinator (in this process) publishes the dimension in a loop and reclaims what nobody pins.
Forks happen in a process started with the spawn context, never in the test process itself.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import _fork_children as children
from _small_coord import allocation_count, fill
from _waiting import wait_for

DIM, LAYER = 40, 7
DEADLINE = 120.0  # seconds: only catches a hang (each scenario takes a few seconds)


class _Publisher:
    """Publishes DIM again and again, each generation's layers stamped with its number."""

    def __init__(self, coord) -> None:
        self.coord = coord
        self.count = 0
        self.generation = 0
        self.publish()

    def publish(self) -> int:
        fill(self.coord.create_proto_dimension(DIM, "forked"), self.generation + 1, layers=12, size=2000)
        self.generation = self.coord.crystallize(DIM)
        self.count += 1
        return self.generation

    def until(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE
        while not done():
            assert time.monotonic() < deadline, "the forked processes did not report in time"
            self.publish()
            # ~50 publications a second: each one supersedes what the forked processes hold, and
            # the coordinator's reaper (every 20 ms) would free it if their pins did not hold it.
            # At 200 a second the test process spent most of each scenario's CPU publishing.
            time.sleep(0.02)


def _run(coord, tmp_path: Path, target, *args: Any, expect: tuple[str, ...] = ("parent", "child"),
         publishes: int = 20) -> dict:
    pub = _Publisher(coord)
    out = tmp_path / "out"
    out.mkdir()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(coord.name, DIM, LAYER, *args, str(out), ready))
    proc.start()
    try:
        assert ready.wait(DEADLINE), "the forking process did not get going"
        pub.until(lambda: all((out / f"{who}.json").exists() for who in expect))
    finally:
        proc.join(DEADLINE)
        if proc.is_alive():
            proc.kill()
            proc.join(10)
    reports = {who: json.loads((out / f"{who}.json").read_text()) for who in expect}
    # Reclamation ran all along: far fewer generations live than were published.
    assert pub.count >= publishes
    assert allocation_count(coord) < max(pub.count / 2, 8)
    reports["publisher"] = pub
    return reports


def _assert_intact(report: dict) -> None:
    assert report["status"] == "ok", report
    assert report["changed"] == 0, report          # the held bytes never changed
    assert report["unverified"] == 0, report       # nor failed their checksum
    assert report["text_head"] == report["expected_head"], report
    assert report["fresh_bad"] == 0, report        # new lookups through the inherited reader are right
    assert len(report["generations"]) > 1, report  # and saw publications go by
    assert report["own_row_pins_it"], report       # through a row of this very process


def _no_rows_left(coord, pids: set[int]) -> bool:
    return not any(r["pid"] in pids for r in coord._publisher.registry.live())


def test_forked_child_keeps_its_context_after_its_parent_exits(coord, tmp_path):
    reports = _run(coord, tmp_path, children.fork_after_attach, "parent-exits")
    _assert_intact(reports["child"])
    wait_for(lambda: _no_rows_left(coord, {reports["child"]["pid"], reports["parent"]["child"]}), 30,
             "the exited processes' rows swept")


def test_forked_child_keeps_its_context_while_its_parent_lets_go(coord, tmp_path):
    reports = _run(coord, tmp_path, children.fork_after_attach, "parent-lets-go")
    _assert_intact(reports["child"])


def test_parent_keeps_its_context_when_its_forked_child_lets_go_and_exits(coord, tmp_path):
    reports = _run(coord, tmp_path, children.fork_after_attach, "child-lets-go")
    assert reports["child"]["status"] == "ok", reports["child"]
    _assert_intact(reports["parent"])


def test_multiprocessing_fork_child_keeps_its_context_after_its_parent_exits(coord, tmp_path):
    reports = _run(coord, tmp_path, children.mp_fork_after_attach)
    _assert_intact(reports["child"])


def test_forked_child_reads_an_inherited_snapshot_after_its_parent_closed_it_and_exited(coord, tmp_path):
    reports = _run(coord, tmp_path, children.fork_with_a_snapshot)
    child = reports["child"]
    assert child["status"] == "ok", child
    assert child["checks"] > 10 and child["bad"] == 0, child
    assert len(child["current_generations"]) > 1, child  # publications went by meanwhile
    assert child["own_row_pins_it"], child


def test_a_forked_child_runs_its_own_pin_watcher_and_generation_waits(coord, tmp_path):
    pub = _Publisher(coord)
    out = tmp_path / "out"
    out.mkdir()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=children.fork_then_wait_and_idle, args=(coord.name, DIM, LAYER, str(out), ready))
    proc.start()
    try:
        assert ready.wait(DEADLINE)
        wait_for(lambda: (out / "child-ready.json").exists(), DEADLINE, "the child looked up")
        time.sleep(0.2)  # the child is (about to be) asleep in wait_generation
        pub.publish()
        wait_for(lambda: (out / "parent.json").exists(), DEADLINE, "the child reported")
    finally:
        proc.join(DEADLINE)
    child = json.loads((out / "child.json").read_text())
    assert child["status"] == "ok", child
    assert child["newer"] > child["seen"], child    # woken by the publication, in the child
    assert not child["still_pins_seen"], child      # its own watcher let the old generation go


def test_forked_child_looks_up_and_snapshots_through_a_row_of_its_own(coord, tmp_path):
    reports = _run(coord, tmp_path, children.fork_then_lookup, publishes=1)
    child, parent = reports["child"], reports["parent"]
    assert child["status"] == "ok", child
    assert child["fresh_ok"] and child["snapshot_ok"] and child["own_row_pins_it"], child
    assert parent["still_ok"] and parent["own_row_pins_it"], parent
    wait_for(lambda: _no_rows_left(coord, {child["pid"], parent["pid"]}), 30, "both rows released")


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return "gone"


def _start_stopping_child(coord, tmp_path: Path, mode: str):
    pub = _Publisher(coord)
    out = tmp_path / "out"
    out.mkdir()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=children.fork_child_stops_in_handover,
                       args=(coord.name, DIM, LAYER, mode, str(out), ready))
    proc.start()
    assert ready.wait(DEADLINE), "the forking process did not get going"
    forked = json.loads((out / "forked.json").read_text())
    wait_for(lambda: _state(forked["child"]) == "T", 30, "the child stopped in its hand-over")
    return pub, out, proc, forked


def _publish_for(pub: _Publisher, seconds: float) -> None:
    end = time.monotonic() + seconds
    pub.until(lambda: time.monotonic() > end)


def test_the_sweep_spares_the_row_claimed_for_a_child_whose_parent_was_killed_at_fork(coord, tmp_path):
    pub, out, proc, forked = _start_stopping_child(coord, tmp_path, "parent-killed")
    child = forked["child"]
    try:
        os.kill(forked["parent"], signal.SIGKILL)
        # Not join(): the stopped child holds the end of the pipe that join() waits on.
        wait_for(lambda: proc.exitcode is not None, 30, "the parent killed")
        _publish_for(pub, 1.5)  # many reaper rounds, each sweeping dead rows
        claimed = [r for r in coord._publisher.registry.live() if r["pid"] == forked["parent"]]
        assert len(claimed) == 1 and claimed[0]["handover_ns"], claimed  # spared: the child may take it over
        os.kill(child, signal.SIGCONT)
        pub.until(lambda: (out / "child.json").exists())
    finally:
        if _state(child) not in ("gone", "Z"):
            os.kill(child, signal.SIGKILL)
    _assert_intact(json.loads((out / "child.json").read_text()))


def test_a_child_too_late_for_its_hand_over_is_refused_typed_and_leaves_its_parent_alone(coord, tmp_path):
    pub, out, proc, forked = _start_stopping_child(coord, tmp_path, "late")
    try:
        _publish_for(pub, 1.5)  # past the 0.5 s window: the sweep drops the claimed row
        assert not [r for r in coord._publisher.registry.live() if r["handover_ns"]]
        os.kill(forked["child"], signal.SIGCONT)
        pub.until(lambda: (out / "parent.json").exists())
    finally:
        proc.join(DEADLINE)
        if proc.is_alive():
            proc.kill()
            proc.join(10)
    child = json.loads((out / "child.json").read_text())
    assert child["lookup"] == "ReaderForked" and child["snapshot_lookup"] == "ReaderForked", child
    assert "attach() again" in child["message"] and str(forked["child"]) in child["message"], child
    _assert_intact(json.loads((out / "parent.json").read_text()))


def test_a_row_claimed_for_a_fork_that_never_happened_goes_after_its_deadline(coord, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=children.claim_without_forking, args=(coord.name, 1, 1, str(out), ready, done))
    proc.start()
    try:
        assert ready.wait(DEADLINE)
        pid = json.loads((out / "claimed.json").read_text())["pid"]
        rows = [r for r in coord._publisher.registry.live() if r["pid"] == pid]
        assert sorted(bool(r["handover_ns"]) for r in rows) == [False, True], rows
        # Dropped by the coordinator's dead-row sweep (every few seconds when idle) though its
        # claimant lives; the claimant's own row stays.
        wait_for(lambda: [bool(r["handover_ns"]) for r in coord._publisher.registry.live() if r["pid"] == pid]
                 == [False], 60, "the unclaimed row dropped")
        done.set()
        proc.join(DEADLINE)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
    parent = json.loads((out / "parent.json").read_text())
    assert parent["own_row_pins_it"] and parent["intact"], parent


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q", "-n", "0"])
