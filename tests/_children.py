"""Functions that run in child processes (importable, so the spawn start method can find them)."""

from __future__ import annotations

import os
import random
import time

from shmpool.lowlevel import SharedInstance
from shmpool.substrate.alloc import AllocationTable


def churn(name: str, seed: int, rounds: int, results) -> None:
    """Allocate and free at random, stamping each allocation and checking nobody overwrote it."""
    inst = SharedInstance.attach(name)
    rng = random.Random(seed)
    held = []
    corrupt = 0
    stamp = seed.to_bytes(2, "little")
    try:
        for _ in range(rounds):
            if held and (len(held) > 20 or rng.random() < 0.45):
                h, tag = held.pop(rng.randrange(len(held)))
                if bytes(inst.handle_view(h)) != tag * (h.nbytes // len(tag)):
                    corrupt += 1
                inst.table.free(h)
            else:
                nbytes = rng.choice([100, 4096, 5000, 70_000, 300_000])
                nbytes -= nbytes % 2
                h = inst.table.allocate(nbytes)
                inst.handle_view(h)[:] = stamp * (nbytes // 2)
                held.append((h, stamp))
        for h, tag in held:
            if bytes(inst.handle_view(h)) != tag * (h.nbytes // len(tag)):
                corrupt += 1
            inst.table.free(h)
        results.put(("ok", seed, corrupt))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(("error", seed, repr(exc)))
    finally:
        inst.close()


def die_inside_allocation(name: str, nbytes: int, ready) -> None:
    """Start an allocation and stop forever half way through the bitmap update (to be SIGKILLed)."""
    inst = SharedInstance.attach(name)
    original = AllocationTable._set_bits

    def set_bits_then_hang(self, *args):
        original(self, *args)
        ready.set()
        time.sleep(3600)

    AllocationTable._set_bits = set_bits_then_hang
    inst.table.allocate(nbytes)


def hold_lock_without_owner(name: str, ready) -> None:
    """Win the table lock and die before recording an owner (the core's kill point lock.won)."""
    from shmpool.substrate import _faults
    inst = SharedInstance.attach(name)
    ready.set()
    _faults.arm("lock.won.table")
    inst.lock.acquire()
    time.sleep(3600)  # not reached: SIGKILLed inside acquire


def hold_lock_forever(name: str, ready) -> None:
    """Hold the table lock properly, then wait (to be SIGSTOPped, then killed)."""
    inst = SharedInstance.attach(name)
    inst.lock.acquire()
    ready.set()
    time.sleep(3600)


def allocate_then_wait(name: str, count: int, nbytes: int, ready) -> None:
    """Own some allocations, then wait to be killed."""
    inst = SharedInstance.attach(name)
    for _ in range(count):
        inst.table.allocate(nbytes)
    ready.set()
    time.sleep(3600)


def pid() -> int:
    return os.getpid()


def grow_and_fill(name: str, nbytes: int, count: int, results, hold) -> None:
    """Allocate ``count`` x ``nbytes`` (enough to force pool growth), stamp each, report the
    handles' coordinates, and keep them until ``hold`` is set (their owner must stay alive)."""
    inst = SharedInstance.attach(name)
    handles = []
    try:
        for i in range(count):
            h = inst.table.allocate(nbytes)
            inst.handle_view(h)[:] = bytes([i % 251]) * nbytes
            handles.append(h)
        results.put([(h.pool, h.first_block, h.nbytes, h.record, h.serial) for h in handles])
        hold.wait(30)
    finally:
        inst.close()
