"""How long the coordinator's reaper sleeps between two rounds: 20 ms while busy, up to 1 s idle.

A round every 20 ms whatever happened cost an idle coordinator ~20 ms of CPU a second, most of
it the cold caches of each wake-up (docs/performance.md, "An idle coordinator"). So the reaper
keeps its short rounds (RECLAIM_INTERVAL) exactly while something may need one soon and nobody
would tell it:

- a superseded generation waits to be freed: its last pin may go at any moment;
- a publication is less than PUBLISH_SETTLE old, or the last round re-sent generation wake-ups:
  a waiter may have missed its post (shmpool/data/gen_wait.py);
- a slot of the job board is in use (deadlines, dead clients, the board's heal are polled), or a
  request was queued less than BOARD_QUIET ago;
- a worker's exit cannot be heard (no pidfd) or a dead one is still unhandled;
- a reader still asks for an evicted dimension (a reload that failed is retried every round);
- cold-dimension compression is on: it counts sampling periods, so they stay
  ``sample_interval`` apart (its longest sleep).

Otherwise the sleep ends at the next clocked step (the 1 s sweeps, a delayed worker restart),
at most IDLE_TICK, or when an event posts the wake semaphore: a publication
(Publisher._bump_epoch, once ``wake_reaper`` is set), a worker's exit (worker_exits.py), a worker
taking a job off an idle board (JobBoard.reaper_may_sleep / claim_reaper_wake), a reader asking for
an evicted dimension, stop(). What only a poll can see waits for the next round, at most
IDLE_TICK: names removed from /dev/shm (checked first in every round, so also before a worker
death is handled), a client that died with no job on the board, TOUCHED marks (sampled at the
start of a round, before any eviction of that round reads them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shmpool.jobs.jobboard import JobBoard

    from .capacity import CapacityManager, CapacityPolicy
    from .pool import WorkerPool
    from .publisher import Publisher

__all__ = ["RECLAIM_INTERVAL", "IDLE_TICK", "PUBLISH_SETTLE", "BOARD_QUIET", "ReapClock", "sleep_after_round"]

RECLAIM_INTERVAL = 0.02  # the short round: superseded regions, deadlines, dead workers checked this often
IDLE_TICK = 1.0          # the longest sleep of a reaper with nothing to do
PUBLISH_SETTLE = 0.1     # seconds of short rounds after a publication: wake-ups it lost are re-sent
# Seconds without a request queued before the reaper may sleep long. Without it, jobs sent one at
# a time (the board idle between them) put the reaper to sleep after nearly every job and had the
# next job's worker wake it: 108 rounds a second with a job every 5 ms, against the short rounds' 50.
BOARD_QUIET = 0.5


@dataclass
class ReapClock:
    """When the reaper last ran its two slower steps (time.monotonic()), and what it saw of the
    work that keeps its rounds short."""
    heal: float
    sweep: float
    resent: int = 0             # generation wake-ups the last round re-sent
    enqueued: int = 0           # the board's JW.Q_TAIL when last seen to move
    board_used_at: float = 0.0  # and when that was


def sleep_after_round(clock: ReapClock, sweep_due: float, *, publisher: Publisher, pool: WorkerPool | None,
                      board: JobBoard | None, capacity: CapacityManager | None, policy: CapacityPolicy) -> float:
    """Seconds the reaper may sleep now: RECLAIM_INTERVAL, or up to IDLE_TICK when idle (the
    module docstring says which). ``sweep_due``: time.monotonic() of the next 1 s step."""
    # First: a publication from another thread after this line posts the reaper (the GIL orders
    # this store before the reads below, and the publisher's stores before its read of it).
    publisher.wake_reaper = True
    sleep = _idle_sleep(clock, sweep_due, publisher, pool, board, capacity, policy)
    if sleep <= RECLAIM_INTERVAL:
        publisher.wake_reaper = False
    return sleep


def _idle_sleep(clock: ReapClock, sweep_due: float, publisher: Publisher, pool: WorkerPool | None,
                board: JobBoard | None, capacity: CapacityManager | None, policy: CapacityPolicy) -> float:
    now = time.monotonic()
    if publisher.superseded or clock.resent or now - publisher.published_at < PUBLISH_SETTLE:
        return RECLAIM_INTERVAL
    if pool is not None and (not pool.exits_are_events or pool.behind):
        return RECLAIM_INTERVAL
    if capacity is not None and capacity.reload_pending():
        return RECLAIM_INTERVAL
    if board is not None:
        enqueued = board.enqueued()
        if enqueued != clock.enqueued:
            clock.enqueued, clock.board_used_at = enqueued, now
        if now - clock.board_used_at < BOARD_QUIET:
            return RECLAIM_INTERVAL
    longest = min(IDLE_TICK, policy.sample_interval) if policy.compress_cold else IDLE_TICK
    due = sweep_due
    restart = pool.next_restart() if pool is not None else None
    if restart is not None:
        due = min(due, restart)
    sleep = min(longest, due - now)
    if sleep <= RECLAIM_INTERVAL:
        return RECLAIM_INTERVAL
    if board is not None and not board.reaper_may_sleep():  # last: it raises the workers' flag
        return RECLAIM_INTERVAL
    return sleep
