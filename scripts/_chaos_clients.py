"""Client processes of scripts/chaos.py: live clients that check every answer, and victims.

Both are started from a fork server that has already imported shmpool (scripts/chaos.py sets
that up), so a victim is ready in tens of milliseconds instead of the 0.3-0.5 s of a fresh
interpreter. Nothing here imports ``coordinator``: these are ordinary users of an instance.

A *live* client runs a few threads that submit the built-in ``lookup`` and ``load_contexts`` jobs
and check each answer until told to stop; every future must complete within ``lost_after``
seconds, else it counts as lost. A *victim* keeps ``jobs`` jobs in flight (slow and fast, so a
kill finds its slots queued, running, finished and half-consumed) until it is SIGKILLed; half
of its slow jobs carry an array argument large enough to spill into pool blocks
(shmpool/jobs/arg_spill.py), so kills also find spilled arguments placed, queued, running and
answered, and the campaign's leak check holds them to being freed.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
from collections import Counter, deque

import numpy as np

import shmpool
from shmpool.errors import AttachError, ShmPoolError
from shmpool.tools.stress import checked_contexts, random_request

__all__ = ["CHAOS_DIMENSION", "CHAOS_LAYERS", "SLOW_JOB", "chaos_layer", "round_of", "live_client", "victim"]

CHAOS_DIMENSION = 100  # the soak's dimension, crystallized again and again (the sample has 1-14)
CHAOS_LAYERS = 50
SLOW_JOB = "_chaos_jobs:slow"
LOOKUP_SHARE = 0.7  # the rest are load_contexts of stress.PATH_STEPS steps
SPILLED_TAG_ITEMS = 4096  # float64: 32 KiB, above a quarter of the 64 KiB slot, so it spills
EXAMPLES = 5  # error messages kept per thread


def chaos_layer(layer_id: int, round_: int) -> bytes:
    """Layer ``layer_id`` of the chaos dimension as crystallized in round ``round_``.

    The header names both and the rest is derived from the header, so a reader can recompute the
    exact bytes: a layer whose header and body come from different rounds (a torn or mixed read)
    fails the comparison, which a CRC32 of mixed-but-stored bytes would not catch.
    """
    head = f"chaos layer {layer_id} round {round_}\n".encode()
    seed = hashlib.blake2b(head, digest_size=64).digest()
    size = 64 + (layer_id * 97) % 2000
    return head + (seed * (size // 64 + 1))[:size]


def round_of(content, layer_id: int) -> int | None:
    """The round a chaos layer's bytes are exactly the content of, or None if they are not whole."""
    head = bytes(content[:64]).split(b"\n", 1)[0].split()
    if len(head) != 5 or head[:2] != [b"chaos", b"layer"] or head[3] != b"round":
        return None
    try:
        lid, rnd = int(head[2]), int(head[4])
    except ValueError:
        return None
    if lid != layer_id or content != chaos_layer(lid, rnd):
        return None
    return rnd


class _Tally:
    """What one live-client thread saw; every field is a count except ``failures`` and ``examples``."""

    __slots__ = ("futures", "completed", "ok", "lost", "submit_timeouts", "torn", "wrong", "regressions",
                 "failures", "examples")

    def __init__(self) -> None:
        self.futures = self.completed = self.ok = self.lost = self.submit_timeouts = 0
        self.torn = self.wrong = self.regressions = 0
        self.failures: Counter[str] = Counter()
        self.examples: list[str] = []

    def fail(self, kind: str, what: str) -> None:
        self.failures[kind] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{kind}: {what}")


def _keys(client) -> dict[int, list[int]]:
    reader = client.reader
    return {dim: reader.layer_ids(dim) for dim in reader.dimensions()}


def _check(result, op: str, expect, tally: _Tally, state: dict, seen: dict[int, int]) -> None:
    """Ids as asked, CRC32 whole, chaos layers byte-exact, and their rounds never going back."""
    for ctx in checked_contexts(result, op, expect, tally):
        if ctx.dimension_id != CHAOS_DIMENSION:
            continue
        rnd = round_of(ctx.content, ctx.layer_id)
        # One generation number is one round's content, in every process that maps it.
        if rnd is None or seen.setdefault(ctx.generation, rnd) != rnd:
            tally.torn += 1
            continue
        # This thread's jobs run one after another and each resolves the newest generation
        # published when it is decoded, so the rounds it sees can only go forward.
        if rnd < state["round"]:
            tally.regressions += 1
        state["round"] = max(state["round"], rnd)


def _live_thread(client, keys, seed: int, stop, lost_after: float, tally: _Tally) -> None:
    rng = random.Random(seed)
    state = {"round": -1}
    seen: dict[int, int] = {}
    while not stop.is_set():
        op, args, expect = random_request(rng, keys, LOOKUP_SHARE)
        try:
            future = client.submit(op, *args, timeout=lost_after)
        except ShmPoolError as exc:  # before TimeoutError: LockTimeout is both
            tally.fail(type(exc).__name__, f"submit {op}: {exc}")
            if isinstance(exc, AttachError):
                break  # this client is broken for good
            continue
        except TimeoutError:  # no slot within lost_after: a stuck board
            tally.submit_timeouts += 1
            continue
        tally.futures += 1
        try:
            result = future.result(lost_after)
        except ShmPoolError as exc:
            tally.completed += 1
            tally.fail(type(exc).__name__, f"{op}: {exc}")
            continue
        except TimeoutError:
            tally.lost += 1
            if len(tally.examples) < EXAMPLES:
                tally.examples.append(f"lost: {op}{args} not answered within {lost_after} s")
            future.cancel()
            continue
        except Exception as exc:  # noqa: BLE001 - any other outcome is a failure to count, by type
            tally.completed += 1
            tally.fail(type(exc).__name__, f"{op}: {exc}")
            continue
        tally.completed += 1
        tally.ok += 1
        _check(result, op, expect, tally, state, seen)
        del result  # contexts pin their generation: let it go now


def live_client(name: str, threads: int, seed: int, stop, results, lost_after: float) -> None:
    """A live client process: report ("ready", pid) then, once ``stop`` is set, ("result", pid, totals)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a run ends
    try:
        client = shmpool.connect(name, timeout=lost_after)
        keys = _keys(client)
    except BaseException as exc:
        results.put(("fatal", os.getpid(), f"{type(exc).__name__}: {exc}"))
        return
    tallies = [_Tally() for _ in range(threads)]
    results.put(("ready", os.getpid(), None))
    pool = [threading.Thread(target=_live_thread, args=(client, keys, seed * 1000 + i, stop, lost_after, t),
                             daemon=True) for i, t in enumerate(tallies)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    client.close()
    failures: Counter[str] = Counter()
    for t in tallies:
        failures.update(t.failures)
    totals = {field: sum(getattr(t, field) for t in tallies) for field in _Tally.__slots__[:-2]}
    totals["failures"] = dict(failures)
    totals["examples"] = [e for t in tallies for e in t.examples][:10]
    results.put(("result", os.getpid(), totals))


def victim(name: str, jobs: int, seed: int, ready) -> None:
    """Keep ``jobs`` jobs in flight, forever: the parent SIGKILLs this process at a random moment.

    ``ready`` (a Connection) gets b"c" once connected and b"r" once the first ``jobs`` are
    submitted (which waits while live clients hold the other slots).
    """
    client = shmpool.connect(name)
    ready.send_bytes(b"c")
    keys = _keys(client)
    rng = random.Random(seed)

    def submit(i: int):
        draw = rng.random()
        if draw < 0.25:  # a spilled argument, answered back inline (32 KiB fits the response area)
            return client.submit(SLOW_JOB, rng.uniform(0.005, 0.1), np.full(SPILLED_TAG_ITEMS, i, dtype=np.float64))
        if draw < 0.5:
            return client.submit(SLOW_JOB, rng.uniform(0.005, 0.1), i)
        op, args, _ = random_request(rng, keys, LOOKUP_SHARE)
        return client.submit(op, *args)

    futures = deque(submit(i) for i in range(jobs))
    ready.send_bytes(b"r")
    i = jobs
    while True:
        try:
            futures.popleft().result(60)
        except Exception:  # noqa: BLE001, S110 - a victim's answers do not matter, only its death does
            pass
        futures.append(submit(i))
        i += 1
