"""Attached readers and the generations they pin.

Each reader process claims a row (pid, start token) and owns the pin words of that row: per
directory entry, the exact generations it holds views into (shmpool/data/pins.py). The coordinator
frees a superseded region only when no live reader pins that generation, and drops the rows (and
pins) of readers whose process died, so a crashed reader cannot leak memory.

Claiming and releasing a row take the table lock (rare); pin updates are single int64 stores
by the row's owner and need none. So do the row's EPOCH_SEEN and SEEN_NS, which say the reader
honoured the coordinator's last request to let go of superseded generations.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from loguru import logger

from ..substrate._proc import is_alive, my_identity
from ..errors import AttachError
from ..substrate.layout import RD, W, Control
from ..substrate.lock import SharedLock
from .pins import pinned_rows

__all__ = ["ReaderRegistry"]


class ReaderRegistry:
    def __init__(self, control: Control, lock: SharedLock, instance: str) -> None:
        self._ctl = control
        self._lock = lock
        self._instance = instance

    def register(self) -> int:
        """Claim a reader row for this process; returns its index."""
        ctl = self._ctl
        pid, start = my_identity()
        with self._lock:
            rows = ctl.readers
            free = np.flatnonzero(rows[:, RD.PID] == 0)
            if not len(free):
                self._reap_dead_locked()
                free = np.flatnonzero(rows[:, RD.PID] == 0)
                if not len(free):
                    raise AttachError(name=self._instance,
                                      reason=f"all {len(rows)} reader slots are taken by live processes")
            slot = int(free[0])
            ctl.pins[slot] = 0
            rows[slot, RD.START] = start
            rows[slot, RD.ATTACHED_NS] = time.time_ns()
            # Nothing superseded before it attached can be held by it: it has answered those.
            rows[slot, RD.EPOCH_SEEN] = ctl.words[W.PIN_EPOCH]
            rows[slot, RD.SEEN_NS] = time.time_ns()
            rows[slot, RD.PID] = pid
            attached = int(ctl.words[W.READERS_ATTACHED]) + 1
            ctl.words[W.READERS_ATTACHED] = attached
            ctl.words[W.READERS_PEAK] = max(attached, int(ctl.words[W.READERS_PEAK]))
        return slot

    def unregister(self, slot: int) -> None:
        if self._ctl.readers is None:
            # The instance was closed by its owner first (the coordinator's own reader, whose
            # contexts outlived stop()): the row went with the instance.
            logger.debug("reader slot {} of {!r}: instance already closed", slot, self._instance)
            return
        with self._lock:
            self._clear_locked(slot)

    def _clear_locked(self, slot: int) -> None:
        ctl = self._ctl
        if int(ctl.readers[slot, RD.PID]) == 0:
            return
        ctl.pins[slot] = 0
        ctl.readers[slot, :] = 0
        ctl.words[W.READERS_ATTACHED] -= 1

    def acknowledge(self, slot: int, epoch: int) -> None:
        """Record that this reader let go of everything superseded up to PIN_EPOCH ``epoch``."""
        rows = self._ctl.readers
        rows[slot, RD.SEEN_NS] = time.time_ns()
        rows[slot, RD.EPOCH_SEEN] = epoch

    def reap_dead(self) -> list[int]:
        """Drop the rows and pins of dead reader processes; returns their pids."""
        rows = self._ctl.readers
        if not any(not is_alive(int(rows[s, RD.PID]), int(rows[s, RD.START]))
                   for s in np.flatnonzero(rows[:, RD.PID])):
            return []
        with self._lock:
            return self._reap_dead_locked()

    def _reap_dead_locked(self) -> list[int]:
        rows = self._ctl.readers
        dead = []
        for slot in np.flatnonzero(rows[:, RD.PID]):
            pid, start = int(rows[slot, RD.PID]), int(rows[slot, RD.START])
            if not is_alive(pid, start):
                self._clear_locked(int(slot))
                dead.append(pid)
        if dead:
            logger.info("dropped reader slots (and their pins) of dead processes {}", dead)
        return dead

    def holders(self, entry: int, generation: int) -> list[tuple[int, int, int]]:
        """(slot, pid, epoch seen) of every attached reader that pins ``generation`` of ``entry``."""
        rows = self._ctl.readers
        return [(int(s), int(rows[s, RD.PID]), int(rows[s, RD.EPOCH_SEEN]))
                for s in pinned_rows(self._ctl, entry, generation)]

    def is_pinned(self, entry: int, generation: int) -> bool:
        """True if some attached reader holds ``generation`` of ``entry``."""
        return len(pinned_rows(self._ctl, entry, generation)) > 0

    def live(self) -> list[dict[str, Any]]:
        ctl = self._ctl
        out = []
        for slot in np.flatnonzero(ctl.readers[:, RD.PID]):
            pins = ctl.pins[slot]
            out.append({
                "slot": int(slot), "pid": int(ctl.readers[slot, RD.PID]),
                "attached_ns": int(ctl.readers[slot, RD.ATTACHED_NS]),
                "epoch_seen": int(ctl.readers[slot, RD.EPOCH_SEEN]),
                "pins": {int(e): [int(w) for w in pins[e]] for e in np.flatnonzero(pins.any(axis=1))},
            })
        return out
