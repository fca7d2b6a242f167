"""What the kept-argument tests check after every scenario (tests/test_client_array_arguments_kept*.py):
the board whole and the table back to its allocations at rest."""

from __future__ import annotations

from _introspect import job_board
from _waiting import wait_for
from shmpool.coordinator import Coordinator

WAIT = 60.0  # seconds a wait_for may take: only catches a hang (a loaded 2-core machine starts processes slowly)


def live_allocations(coord: Coordinator) -> int:
    return int(coord.stats()["live_allocations"])


def assert_board_whole(coord: Coordinator, baseline: int) -> None:
    """Every slot FREE, no channel held, the allocations back to ``baseline``."""
    board = job_board(coord)
    wait_for(lambda: coord.stats()["jobs"]["free"] == board.slot_count, what="every slot free", seconds=WAIT)
    wait_for(lambda: coord.stats()["jobs"]["clients"] == 0, what="every channel released", seconds=WAIT)
    wait_for(lambda: live_allocations(coord) == baseline, what=f"allocations back to {baseline}", seconds=WAIT)
