"""Every slot-state change the board makes is a row of shmpool/jobs/slot_states.py, and every row
is made by some step: a board is driven through each path a slot can take (the job path in the
compiled core; cancel, orphan, requeue, fail and stop in Python) and each step's changes are
checked against the table."""

from __future__ import annotations


import numpy as np
import pytest

from shmpool.jobs.jobboard import JobBoard
from shmpool.jobs.jobs_layout import SC, SlotState, Status
from shmpool.jobs.slot_states import ALLOWED, TRANSITIONS, allowed
from shmpool.substrate._proc import my_identity

S = SlotState


class Walker:
    """Runs board steps and records every slot's state change they make."""

    def __init__(self, board: JobBoard) -> None:
        self.board = board
        self.seen: set[tuple[SlotState, SlotState]] = set()

    def step(self, what, *args, **kwargs):
        before = self.board.v.slots[:, SC.STATE].copy()
        out = what(*args, **kwargs)
        after = self.board.v.slots[:, SC.STATE]
        for slot in np.flatnonzero(before != after).tolist():
            change = (S(int(before[slot])), S(int(after[slot])))
            assert allowed(*change), f"{what.__name__} made slot {slot} go {change[0].name} -> {change[1].name}"
            self.seen.add(change)
        return out


@pytest.fixture
def walk(instance_name):
    board = JobBoard.create(instance_name, slots=4, channels=2, payload=1024)
    try:
        yield Walker(board)
    finally:
        board.close()
        board.unlink()


def test_every_step_makes_only_allowed_changes_and_every_allowed_change_is_made(walk):
    b, step = walk.board, walk.step
    ch = b.claim_channel()
    me, _ = my_identity()

    # The job path: submit, take, finish, deliver (completed), release.
    slot, seq = step(b.submit, ch, b"job", timeout=1)
    assert step(b.take) == (slot, seq)
    assert step(b.finish, slot, seq, Status.OK, b"answer") == (True, None)
    assert step(b.completed, ch) == [slot]
    step(b.release_slots, [(slot, seq)])

    # Withdrawn before a worker took it; the worker that pops it frees it.
    slot, seq = step(b.submit, ch, b"job", timeout=1)
    assert step(b.cancel, slot, seq)
    assert step(b.take) is None

    # Its worker died twice: requeued, then failed with an error answer.
    slot, seq = step(b.submit, ch, b"job", timeout=1)
    step(b.take)
    assert step(b.requeue_worker, me, lambda s, a: b"died", 2) == (1, 0)
    step(b.take)
    assert step(b.requeue_worker, me, lambda s, a: b"died", 2) == (0, 1)
    step(b.completed, ch)
    step(b.release_slots, [(slot, seq)])

    # Its client left while it ran (orphaned), and while its answer waited (freed).
    slot, seq = step(b.submit, ch, b"job", timeout=1)
    step(b.take)
    step(b.release_channel, ch)
    assert step(b.finish, slot, seq, Status.OK, b"late") == (False, None)
    ch = b.claim_channel()
    slot, seq = step(b.submit, ch, b"job", timeout=1)
    step(b.take)
    step(b.finish, slot, seq, Status.OK, b"answer")
    step(b.release_channel, ch)

    # Answered at stop without running.
    ch = b.claim_channel()
    slot, seq = step(b.submit, ch, b"job", timeout=1)
    assert step(b.fail_outstanding, lambda s: b"stopped") == 1
    assert step(b.completed, ch) == [slot]
    step(b.release_slots, [(slot, seq)])

    missing = ALLOWED - walk.seen
    assert not missing, "rows no step made: " + ", ".join(f"{a.name} -> {z.name}" for a, z in sorted(missing))
    assert (b.v.slots[:, SC.STATE] == S.FREE).all()


def test_the_table_names_each_change_once_and_never_a_state_to_itself():
    pairs = [(t.before, t.after) for t in TRANSITIONS]
    assert len(pairs) == len(set(pairs))
    assert all(a != z for a, z in pairs)
    assert not allowed(S.FREE, S.DONE) and not allowed(S.DELIVERED, S.DONE) and allowed(S.DONE, S.DONE)
