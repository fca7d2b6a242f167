"""The compiled core's primitives across real processes: atomics, futex wait/wake with deadlines,
and the robust mutex (a SIGKILLed holder is repaired, a SIGSTOPped one is named in LockTimeout).

Timing bounds here only catch hangs (generous deadlines), never speed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

from shmpool._core import RobustMutex, SharedWords
from shmpool.errors import AttachError, LockTimeout, ShmPoolError
from shmpool.substrate.names import segment_name
from shmpool.substrate.segments import Segment

from _core_children import COUNTER_WORD, MUTEX_WORD, PID_WORD, PING_WORD, RECOVERIES_WORD, add_many, hold_lock, pong

SPAWN = mp.get_context("spawn")


@pytest.fixture
def shared(instance_name):
    """(segment name, instance, words, mutex) of a fresh 4 KiB segment, unlinked afterwards."""
    name = segment_name(instance_name, "core")
    seg = Segment.create(name, 4096)
    words = SharedWords(seg.mm)
    lock = RobustMutex(words, MUTEX_WORD, PID_WORD, RECOVERIES_WORD, "probe")
    lock.initialize()
    try:
        yield name, instance_name, words, lock
    finally:
        lock.close()
        words.close()
        seg.close()
        seg.unlink()


def _child(target, *args):
    proc = SPAWN.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def test_fetch_add_from_two_processes_loses_no_increment(shared):
    name, inst, words, _lock = shared
    kids = [_child(add_many, name, inst, 50_000) for _ in range(2)]
    add_many(name, inst, 50_000)
    for kid in kids:
        kid.join(60)
        assert kid.exitcode == 0
    assert words.load(COUNTER_WORD) == 150_000


def test_cas_stores_only_over_the_expected_value(shared):
    _name, _inst, words, _lock = shared
    assert words.cas(COUNTER_WORD, 0, 7) and words.load(COUNTER_WORD) == 7
    assert not words.cas(COUNTER_WORD, 0, 9) and words.load(COUNTER_WORD) == 7


def test_a_sigkilled_holder_is_repaired_by_the_next_locker(shared):
    name, inst, words, lock = shared
    repaired = []
    lock.on_recover = repaired.append
    ready = SPAWN.Event()
    holder = _child(hold_lock, name, inst, ready)
    assert ready.wait(30)
    assert lock.owner() == holder.pid
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    lock.acquire(timeout=5)  # LockTimeout if the kernel had not handed the mutex on
    try:
        assert repaired == [holder.pid] and words.load(RECOVERIES_WORD) == 1
        assert lock.owner() == os.getpid()
    finally:
        lock.release()
    lock.acquire(timeout=1)  # consistent again: a plain lock round, no second repair
    lock.release()
    assert repaired == [holder.pid] and lock.owner() == 0


def test_a_stopped_holder_makes_a_waiter_time_out_naming_it_within_its_timeout(shared):
    name, inst, _words, lock = shared
    ready = SPAWN.Event()
    holder = _child(hold_lock, name, inst, ready)
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            lock.acquire(timeout=0.3)
        waited = time.monotonic() - started
        assert caught.value.owner_pid == holder.pid and str(holder.pid) in str(caught.value)
        assert 0.3 <= waited < 5  # the caller's timeout is honoured; the upper bound only catches a hang
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        os.kill(holder.pid, signal.SIGCONT)
        holder.join(30)


def test_a_repair_that_fails_is_run_again_by_the_next_holder(shared):
    name, inst, _words, lock = shared
    calls = []

    def flaky(dead):
        calls.append(dead)
        if len(calls) == 1:
            raise RuntimeError("repair interrupted")

    lock.on_recover = flaky
    ready = SPAWN.Event()
    holder = _child(hold_lock, name, inst, ready)
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    with pytest.raises(RuntimeError):
        lock.acquire(timeout=5)
    assert lock.owner() == holder.pid  # left behind on purpose: the structures are not trusted yet
    lock.acquire(timeout=5)
    lock.release()
    assert calls == [holder.pid, holder.pid]
    lock.acquire(timeout=1)
    lock.release()
    assert len(calls) == 2


def test_futex_ping_pong_across_processes(shared):
    name, inst, words, _lock = shared
    rounds = 2_000
    child = _child(pong, name, inst, rounds)
    for k in range(rounds):
        words.store(PING_WORD, 2 * k + 1)
        words.wake(PING_WORD, 1)
        while words.load(PING_WORD) != 2 * k + 2:
            assert words.wait(PING_WORD, 2 * k + 1, 30.0) or words.load(PING_WORD) == 2 * k + 2, f"round {k} hung"
    child.join(30)
    assert child.exitcode == 0 and words.load(PING_WORD) == 2 * rounds


def test_a_futex_wait_ends_at_its_deadline_and_not_before(shared):
    _name, _inst, words, _lock = shared
    started = time.monotonic()
    assert words.wait(PING_WORD, 0, 0.25) is False
    assert 0.25 <= time.monotonic() - started < 5
    assert words.wait(PING_WORD, 1, 5.0) is True  # the word is not 1: no sleep at all


def test_a_wait_resumes_after_a_handler_that_returns_and_ends_with_one_that_raises(shared):
    _name, _inst, words, _lock = shared
    seen = []
    previous = signal.signal(signal.SIGALRM, lambda *_: seen.append(time.monotonic()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        started = time.monotonic()
        assert words.wait(PING_WORD, 0, 0.3) is False  # resumed with the time that remained
        assert seen and time.monotonic() - started >= 0.3

        class Interrupted(Exception):
            pass

        def interrupt(*_):
            raise Interrupted

        signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            words.wait(PING_WORD, 0, 10.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_thread_blocked_on_the_lock_lets_the_holder_thread_run(shared):
    # The blocked waiter must drop the GIL, or the holder could never reach its release.
    _name, _inst, _words, lock = shared
    lock.acquire()
    got = threading.Event()

    def waiter():
        lock.acquire(timeout=10)
        got.set()
        lock.release()

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    assert not got.is_set()
    lock.release()
    assert got.wait(10)
    t.join(10)


def test_misuse_raises_typed_errors_not_oserror(shared):
    _name, _inst, words, lock = shared
    with lock:
        with pytest.raises(ShmPoolError, match="already held by this thread"):
            lock.acquire(timeout=0.1)
    with pytest.raises(ShmPoolError, match="does not hold it"):
        lock.release()
    with pytest.raises(IndexError):
        words.load(10_000)
    closed = SharedWords(bytearray(64))
    closed.close()
    with pytest.raises(AttachError):
        closed.load(0)
