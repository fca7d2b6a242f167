"""Attached readers and the generations they pin.

Each reader process claims a row (pid, start token) and owns one pin word per directory entry:
the OLDEST generation of that dimension it still holds views into (0 = none). The coordinator
frees a superseded region only when no live reader pins a generation at or below it, and drops
the rows (and pins) of readers whose process died, so a crashed reader cannot leak memory.

Claiming and releasing a row take the table lock (rare); pin updates are single int64 stores
by the row's owner and need none.
"""

from __future__ import annotations

import time

import numpy as np
from loguru import logger

from ._proc import is_alive, my_identity
from .errors import AttachError
from .layout import RD, W, Control
from .lock import SharedLock

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
            ctl.pins[slot, :] = 0
            rows[slot, RD.START] = start
            rows[slot, RD.ATTACHED_NS] = time.time_ns()
            rows[slot, RD.PID] = pid
            attached = int(ctl.words[W.READERS_ATTACHED]) + 1
            ctl.words[W.READERS_ATTACHED] = attached
            ctl.words[W.READERS_PEAK] = max(attached, int(ctl.words[W.READERS_PEAK]))
        return slot

    def unregister(self, slot: int) -> None:
        with self._lock:
            self._clear_locked(slot)

    def _clear_locked(self, slot: int) -> None:
        ctl = self._ctl
        if int(ctl.readers[slot, RD.PID]) == 0:
            return
        ctl.pins[slot, :] = 0
        ctl.readers[slot, :] = 0
        ctl.words[W.READERS_ATTACHED] -= 1

    def set_pin(self, slot: int, entry: int, generation: int) -> None:
        self._ctl.pins[slot, entry] = generation

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

    def is_pinned(self, entry: int, generation: int) -> bool:
        """True if some attached reader still holds ``generation`` (or older) of ``entry``."""
        ctl = self._ctl
        live = ctl.readers[:, RD.PID] != 0
        pins = ctl.pins[:, entry]
        return bool(np.any(live & (pins != 0) & (pins <= generation)))

    def live(self) -> list[dict]:
        ctl = self._ctl
        out = []
        for slot in np.flatnonzero(ctl.readers[:, RD.PID]):
            pins = ctl.pins[slot]
            out.append({
                "slot": int(slot), "pid": int(ctl.readers[slot, RD.PID]),
                "attached_ns": int(ctl.readers[slot, RD.ATTACHED_NS]),
                "pins": {int(e): int(pins[e]) for e in np.flatnonzero(pins)},
            })
        return out
