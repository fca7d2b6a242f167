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


class Transition(NamedTuple):
    """One allowed change of a slot's STATE word."""
    before: SlotState
    after: SlotState
    by: str      # the process that makes it
    step: str    # the call that makes it


# before -> after | by | step: one row a change, in the order a job's slot lives them.
_TABLE = """
FREE -> SUBMITTED      | client      | submit, submit_many (core)
SUBMITTED -> RUNNING   | worker      | take / finish(take_next) (core)
SUBMITTED -> CANCELLED | client      | cancel; release_channel, a dead client's sweep
SUBMITTED -> DONE      | coordinator | fail_outstanding (answered at stop)
CANCELLED -> FREE      | worker      | take pops and frees it (core); fail_outstanding
RUNNING -> DONE        | worker      | finish (core); coordinator: expire, requeue_worker's last attempt
RUNNING -> ORPHANED    | client      | release_channel, a dead client's sweep
RUNNING -> SUBMITTED   | coordinator | requeue_worker (its worker died)
ORPHANED -> FREE       | worker      | finish (core); coordinator: expire, requeue_worker
DONE -> DELIVERED      | client      | completed / collect: pops its ring (core)
DONE -> FREE           | client      | release_channel, claim_channel of a dead client's, sweep
DELIVERED -> FREE      | client      | release / submit(release=) (core); release_channel, sweep
"""


def _transitions(table: str) -> tuple[Transition, ...]:
    """The rows of ``table`` (``BEFORE -> AFTER | by | step``) as Transitions; a state name
    that SlotState lacks raises KeyError at import."""
    rows = []
    for line in filter(None, (line.strip() for line in table.splitlines())):
        change, by, step = (part.strip() for part in line.split("|", 2))
        before, after = (SlotState[state.strip()] for state in change.split("->"))
        rows.append(Transition(before, after, by, step))
    return tuple(rows)


TRANSITIONS: tuple[Transition, ...] = _transitions(_TABLE)

ALLOWED: frozenset[tuple[SlotState, SlotState]] = frozenset((t.before, t.after) for t in TRANSITIONS)


def allowed(before: int, after: int) -> bool:
    """Whether a slot may go from state ``before`` to ``after`` in one step (same state: yes)."""
    return before == after or (SlotState(before), SlotState(after)) in ALLOWED
