"""Every change a slot's STATE word may make, who makes it, and where (one table, walked by a test).

A slot's state is the one fact the board's other structures are derived from (the free stack,
the queue, the completion rings; JobBoard.heal rebuilds them from the states), so the protocol
is this table. The job path's steps are in the compiled core (shmpool/_core/_board.pyx); repair
and supervision steps are in Python (shmpool/jobs/board_repair.py). tests/test_slot_transitions.py
drives a board through every row and checks that no step makes a change outside it.
"""

from __future__ import annotations

from typing import NamedTuple

from .jobs_layout import SlotState

__all__ = ["Transition", "TRANSITIONS", "ALLOWED", "allowed"]

S = SlotState


class Transition(NamedTuple):
    """One allowed change of a slot's STATE word."""
    before: SlotState
    after: SlotState
    by: str      # the process that makes it
    step: str    # the call that makes it


TRANSITIONS: tuple[Transition, ...] = (
    Transition(S.FREE, S.SUBMITTED, "client", "submit, submit_many (core)"),
    Transition(S.SUBMITTED, S.RUNNING, "worker", "take / finish(take_next) (core)"),
    Transition(S.SUBMITTED, S.CANCELLED, "client", "cancel; release_channel, a dead client's sweep"),
    Transition(S.SUBMITTED, S.DONE, "coordinator", "fail_outstanding (answered at stop)"),
    Transition(S.CANCELLED, S.FREE, "worker", "take pops and frees it (core); fail_outstanding"),
    Transition(S.RUNNING, S.DONE, "worker", "finish (core); coordinator: expire, requeue_worker's last attempt"),
    Transition(S.RUNNING, S.ORPHANED, "client", "release_channel, a dead client's sweep"),
    Transition(S.RUNNING, S.SUBMITTED, "coordinator", "requeue_worker (its worker died)"),
    Transition(S.ORPHANED, S.FREE, "worker", "finish (core); coordinator: expire, requeue_worker"),
    Transition(S.DONE, S.DELIVERED, "client", "completed / collect: pops its ring (core)"),
    Transition(S.DONE, S.FREE, "client", "release_channel, claim_channel of a dead client's, sweep"),
    Transition(S.DELIVERED, S.FREE, "client", "release / submit(release=) (core); release_channel, sweep"),
)

ALLOWED: frozenset[tuple[SlotState, SlotState]] = frozenset((t.before, t.after) for t in TRANSITIONS)


def allowed(before: int, after: int) -> bool:
    """Whether a slot may go from state ``before`` to ``after`` in one step (same state: yes)."""
    return before == after or (SlotState(before), SlotState(after)) in ALLOWED
