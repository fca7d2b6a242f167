"""Coordinator processes that start under the same name at the same instant, round after round."""

from __future__ import annotations

import os

from shmpool import InstanceExists
from shmpool.coordinator import Coordinator


def start_in_rounds(name: str, data_dir: str, rounds: int, barrier, results) -> None:
    """Each round: wait for the other racer, start; report ("started", my pid) or ("exists",
    the owner pid the error carries); the winner stops once both have reported."""
    for r in range(rounds):
        barrier.wait(60)
        coord = Coordinator(name, data_dir=data_dir, workers=0)
        try:
            coord.start()
            results.put((r, "started", os.getpid()))
        except InstanceExists as exc:
            coord = None
            results.put((r, "exists", exc.owner_pid))
        barrier.wait(60)  # both reported: the loser's error named a running owner
        if coord is not None:
            coord.stop()
