"""The job board's statistics: totals derived from the slots, the latency histogram, worker counts.

Read without the lock (a scrape must not contend with workers): snapshots for people and
metrics, not for decisions. Totals are sums over the slots' END_* columns, so they survive any
death (JobBoard.heal closes the gap of one killed between a state change and its count).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .jobs_layout import CC, JW, LATENCY_BOUNDS_NS, SC, BoardState, SlotState

if TYPE_CHECKING:
    from .._core import RobustMutex
    from .jobs_layout import JobsView

__all__ = ["BoardStatistics"]


class BoardStatistics:
    """JobBoard's counters (a mixin: JobBoard provides ``v`` and ``lock``)."""

    v: "JobsView"
    lock: "RobustMutex"

    def note_worker_started(self) -> None:
        """Worker: count itself as attached and serving (WorkerPool.start waits for the count)."""
        with self.lock:
            self.v.words_mv[JW.WORKERS_STARTED] += 1

    def workers_started(self) -> int:
        """Workers that ever reported serving (:meth:`note_worker_started`)."""
        return int(self.v.words_mv[JW.WORKERS_STARTED])

    def note_worker_death(self) -> None:
        """Count a worker death (a statistic only: best effort against a wedged lock)."""
        try:
            self.lock.acquire(0.5)
        except TimeoutError:
            return
        try:
            self.v.words[JW.WORKER_DEATHS] += 1
        finally:
            self.lock.release()

    def counts(self) -> dict[str, int]:
        v = self.v
        w = v.words
        states = v.slots[:, SC.STATE]
        return {
            "slots": v.layout.slots, "free": int(w[JW.FREE_TOP]),
            "queued": int(w[JW.Q_TAIL] - w[JW.Q_HEAD]),
            "running": int(np.count_nonzero(states == SlotState.RUNNING)),
            "submitted": int(v.slots[:, SC.SEQ].sum()), "completed": int(v.slots[:, SC.END_OK].sum()),
            "failed": int(v.slots[:, SC.END_ERROR].sum()), "requeued": int(w[JW.REQUEUED]),
            "cancelled": int(v.slots[:, SC.END_CANCELLED].sum()), "worker_deaths": int(w[JW.WORKER_DEATHS]),
            "clients": int(np.count_nonzero(v.channels[:, CC.PID])),
            "repairs": int(w[JW.REPAIRS]), "lock_recoveries": int(w[JW.LOCK_RECOVERIES]),
        }

    def summary(self) -> dict[str, Any]:
        """Jobs and workers as this board knows them, for a process that only looks (``shmpool stats``).

        ``workers.running`` is workers started minus workers died (each death is followed by a
        restart, which counts as a start)."""
        v = self.v
        w = v.words
        busy = v.slots[v.slots[:, SC.STATE] == SlotState.RUNNING, SC.WORKER_PID]
        started, deaths = int(w[JW.WORKERS_STARTED]), int(w[JW.WORKER_DEATHS])
        return {"accepting": int(w[JW.STATE]) == BoardState.ACCEPTING, "jobs": self.counts(),
                "workers": {"running": max(0, started - deaths), "started": started, "deaths": deaths,
                            "busy_pids": sorted({int(p) for p in busy if p})}}

    def latency_histogram(self) -> dict[str, Any]:
        """Job latency (submitted -> response stored): bucket upper bounds in seconds with
        cumulative counts (Prometheus style, +Inf last), total count and sum in seconds."""
        # One copy of the words: a worker between its three stores can leave the sum one job
        # behind the buckets; the next read is whole again.
        w = self.v.words[JW.LATENCY_COUNT:JW.LATENCY_BUCKET0 + len(LATENCY_BOUNDS_NS) + 1].tolist()
        base = JW.LATENCY_COUNT
        count, sum_ns, counts = w[0], w[JW.LATENCY_SUM_NS - base], w[JW.LATENCY_BUCKET0 - base:]
        cumulative, running = [], 0
        for c in counts:
            running += c
            cumulative.append(running)
        bounds = [b / 1e9 for b in LATENCY_BOUNDS_NS] + [float("inf")]
        return {"buckets": list(zip(bounds, cumulative)), "count": count, "sum_seconds": sum_ns / 1e9}
