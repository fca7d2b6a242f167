"""Child processes of tests/test_core_primitives.py: each attaches the test's segment by name."""

from __future__ import annotations

import time

from shmpool._core import RobustMutex, SharedWords
from shmpool.substrate.segments import Segment

MUTEX_WORD, PID_WORD, RECOVERIES_WORD, COUNTER_WORD, PING_WORD = 8, 0, 1, 2, 3


def _attach(seg_name: str, instance: str) -> tuple[Segment, SharedWords, RobustMutex]:
    seg = Segment.attach(seg_name, instance=instance)
    words = SharedWords(seg.mm)
    return seg, words, RobustMutex(words, MUTEX_WORD, PID_WORD, RECOVERIES_WORD, "probe")


def add_many(seg_name: str, instance: str, times: int) -> None:
    _seg, words, _lock = _attach(seg_name, instance)
    for _ in range(times):
        words.fetch_add(COUNTER_WORD, 1)


def hold_lock(seg_name: str, instance: str, ready) -> None:
    _seg, _words, lock = _attach(seg_name, instance)
    lock.acquire()
    ready.set()
    time.sleep(3600)  # SIGSTOPped or SIGKILLed by the test


def pong(seg_name: str, instance: str, rounds: int) -> None:
    """Answer each odd value of the ping word with the next even one."""
    _seg, words, _lock = _attach(seg_name, instance)
    for k in range(rounds):
        while words.load(PING_WORD) != 2 * k + 1:
            words.wait(PING_WORD, 2 * k, 30.0)
        words.store(PING_WORD, 2 * k + 2)
        words.wake(PING_WORD, 1)
