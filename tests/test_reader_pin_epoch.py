"""No pin-watch thread: an idle reader holds only what its objects hold (issue 22, reader memory).

A reader keeps the generation it last used mapped for its next lookup. That generation is pinned
by the reader row's cache word (PinCol.CACHE) only while a lookup is in progress (BUSY) or
something made from it lives (USERS: a context, a ``content`` view, an array over it, a batch), so
the coordinator reclaims it from a reader process that makes no call at all; the reader's next
lookup sees the new generation and maps it. The handshake's steps are each killed (SIGKILL) and
stopped (SIGSTOP) at, with the dimension published meanwhile: nothing torn, nothing leaked, and a
lookup stopped inside the handshake keeps its generation until it returns.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

import _pin_epoch_children as children
import shmpool
from _reader_children import stamped_layer
from _small_coord import allocation_count, coord  # noqa: F401  (a fixture)
from _waiting import wait_for
from shmpool.substrate.layout import CACHE_SHIFT, PN, CacheBit

DIM, LAYER = 33, 4
CACHE_USERS_BIT = int(CacheBit.USERS)
DEADLINE = 60.0  # seconds: only catches a hang (each step takes well under a second)


def _publish(coord, generation: int, layers: int = 8, size: int = 3000) -> int:  # noqa: F811
    proto = coord.create_proto_dimension(DIM, "epoch")
    for lid in range(1, layers + 1):
        proto.add_layer(lid, stamped_layer(generation, lid, size + lid * 10))
    return coord.crystallize(DIM)


def _superseded(coord) -> int:  # noqa: F811
    coord.reclaim()
    return int(coord.stats()["superseded_pending"])


def _cache_word(reader) -> int:
    return int(reader._map.dims[DIM].cache_word)


def _spawn(target, *args) -> mp.Process:
    proc = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _get(results, kind: str) -> dict:
    status, report = results.get(timeout=DEADLINE)
    assert status == kind, report
    return report


# ----------------------------------------------------------------------------- no thread

def test_opening_readers_and_looking_up_starts_no_shmpool_thread(coord):  # noqa: F811
    _publish(coord, 1)
    before = set(threading.enumerate())  # the coordinator's own (it runs in this process)
    readers = [shmpool.attach(coord.name) for _ in range(3)]
    try:
        for r in readers:
            assert r.load_layer_context(DIM, 1).generation == 1
            assert len(r.load_contexts([(DIM, 1), (DIM, 2)])) == 2
            with r.snapshot() as snap:
                assert snap.load_layer_context(DIM, 3).generation == 1
        _publish(coord, 2)
        assert all(r.load_layer_context(DIM, 1).generation == 2 for r in readers)
        mine = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("shmpool")]
        assert mine == [], f"a reader started threads {mine}"
    finally:
        for r in readers:
            r.close()


# ----------------------------------------------------------------------------- the cache word, in-process

def test_the_cache_word_says_users_exactly_while_an_object_over_the_generation_lives(coord):  # noqa: F811
    g = _publish(coord, 1)
    with shmpool.attach(coord.name) as reader:
        idle, users = g << CACHE_SHIFT, g << CACHE_SHIFT | CacheBit.USERS
        ctx = reader.load_layer_context(DIM, 2)
        assert _cache_word(reader) == users
        assert len(ctx.content) > 0
        del ctx  # with its content view made and kept by it
        assert _cache_word(reader) == idle
        ctx = reader.load_layer_context(DIM, 2)
        view = ctx.content
        del ctx
        assert _cache_word(reader) == users, "the bare view still reads the generation"
        part = view[10:20]
        del view
        assert _cache_word(reader) == users
        del part
        assert _cache_word(reader) == idle
        import numpy as np
        array = np.frombuffer(reader.load_layer_context(DIM, 3).content, np.uint8)
        assert _cache_word(reader) == users
        del array
        assert _cache_word(reader) == idle
        batch = reader.load_contexts([(DIM, 1), (DIM, 2), (DIM, 1)])
        assert _cache_word(reader) == users
        first = batch[0]
        del batch
        assert _cache_word(reader) == users
        del first
        assert _cache_word(reader) == idle
        scanned = list(reader.scan(DIM))
        assert len(scanned) == 8 and _cache_word(reader) == users
        del scanned
        assert _cache_word(reader) == idle
        assert reader.layer_ids(DIM) == list(range(1, 9)) and _cache_word(reader) == idle
        with pytest.raises(shmpool.LayerNotFound):
            reader.load_layer_context(DIM, 999)
        assert _cache_word(reader) == idle, "a miss leaves nothing held"


def test_a_batch_leaves_the_cache_word_as_it_found_it_where_it_kept_nothing(coord):  # noqa: F811
    g = _publish(coord, 1)
    with shmpool.attach(coord.name) as reader:
        reader.load_layer_context(DIM, 1)
        assert _cache_word(reader) == g << CACHE_SHIFT
        batch = reader.load_contexts([(DIM, 999), (DIM, 998)], strict=False)  # entered, nothing added
        assert len(batch) == 0 and len(batch.missing) == 2
        assert _cache_word(reader) == g << CACHE_SHIFT
        kept = reader.load_layer_context(DIM, 2)
        batch = reader.load_contexts([(DIM, 1), (DIM, 999)], strict=False)  # USERS already set: no BUSY
        assert len(batch) == 1 and _cache_word(reader) == g << CACHE_SHIFT | CACHE_USERS_BIT
        del kept, batch
        assert _cache_word(reader) == g << CACHE_SHIFT


def test_a_superseded_generation_only_the_cache_holds_is_reclaimed_without_a_lookup(coord):  # noqa: F811
    _publish(coord, 1)
    with shmpool.attach(coord.name) as reader:
        reader.load_layer_context(DIM, 1)
        base = allocation_count(coord)
        for generation in range(2, 6):
            _publish(coord, generation)
            wait_for(lambda: _superseded(coord) == 0, 5, f"generation {generation - 1} reclaimed")
        assert allocation_count(coord) == base
        ctx = reader.load_layer_context(DIM, 1)
        assert bytes(ctx.content[:8]) == stamped_layer(5, 1, 100)[:8] and ctx.verify()


def test_a_held_context_keeps_its_generation_and_moves_it_into_the_pin_words(coord):  # noqa: F811
    _publish(coord, 1)
    with shmpool.attach(coord.name) as reader:
        ctx = reader.load_layer_context(DIM, 5)
        copy = bytes(ctx.content)
        for generation in range(2, 5):
            _publish(coord, generation)
            assert reader.load_layer_context(DIM, 1).generation == generation  # the cache moves on
        time.sleep(0.05)
        assert _superseded(coord) == 1, "generation 1 is held by a context"
        pins = reader.instance.control.pins[reader._slot, reader._map.dims[DIM].entry]
        assert 1 in (int(pins[PN.EXACT0]), int(pins[PN.EXACT1]))
        assert bytes(ctx.content) == copy and ctx.verify()
        del ctx
        gc.collect()
        wait_for(lambda: _superseded(coord) == 0, 5, "generation 1 freed with its context")


# ----------------------------------------------------------------------------- real processes

def test_an_idle_reader_process_holds_no_superseded_generation_and_then_reads_the_new_bytes(coord):  # noqa: F811
    _publish(coord, 1)
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = _spawn(children.look_idle_look, coord.name, DIM, LAYER, ready, go, results)
    try:
        assert _get(results, "first")["stamp"] == (1, LAYER)
        assert ready.wait(DEADLINE)
        base = allocation_count(coord)
        for generation in range(2, 5):
            _publish(coord, generation)
            # The child makes no call: its cached generation goes without it.
            wait_for(lambda: _superseded(coord) == 0, 5, f"generation {generation - 1} reclaimed from the idle reader")
        assert proc.is_alive() and coord.stats()["readers_attached"] >= 1
        assert allocation_count(coord) == base
        assert not [p for p in coord.stats()["pins"] if p["pid"] == proc.pid and p["generation"] != 4]
        go.set()
        report = _get(results, "ok")
        assert report == {"stamp": (4, LAYER), "generation": 4, "verify": True}
    finally:
        go.set()
        proc.join(DEADLINE)


@pytest.mark.parametrize("what", ["context", "content", "array", "batch"])
def test_an_idle_reader_process_keeps_what_its_objects_hold(coord, what):  # noqa: F811
    _publish(coord, 1)
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = _spawn(children.hold_idle, coord.name, DIM, LAYER, what, ready, go, results)
    try:
        assert ready.wait(DEADLINE)
        for generation in range(2, 8):  # generation 1's blocks would be reused if they were free
            _publish(coord, generation)
            wait_for(lambda: _superseded(coord) == 1, 5, f"generation {generation - 1} reclaimed, 1 kept")
        go.set()
        report = _get(results, "ok")
        assert report["stamp"] == (1, LAYER) and report["intact"], report
        proc.join(DEADLINE)
        wait_for(lambda: _superseded(coord) == 0, 5, "generation 1 freed once the reader is gone")
    finally:
        go.set()
        proc.join(DEADLINE)


# ----------------------------------------------------------------------------- deaths in the handshake

@pytest.mark.parametrize("point", ["lookup.busy", "lookup.made", "cache.entered"])
def test_a_reader_killed_at_each_step_of_a_lookup_leaves_nothing_behind(coord, point):  # noqa: F811
    _publish(coord, 1)
    base = allocation_count(coord)
    attached = coord.stats()["readers_attached"]
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = _spawn(children.fault_at_next_lookup, coord.name, DIM, LAYER, point, False, ready, go, results)
    assert ready.wait(DEADLINE)
    if point == "cache.entered":  # the mapping's step: a publish between the two lookups makes it map again
        _publish(coord, 2)
    go.set()
    proc.join(DEADLINE)
    assert proc.exitcode == -signal.SIGKILL, f"the reader was not killed at {point}: {proc.exitcode}"
    for generation in range(3, 6):
        _publish(coord, generation)
    wait_for(lambda: _superseded(coord) == 0 and coord.stats()["readers_attached"] == attached, 5,
             "the dead reader's row swept and every superseded generation freed")
    assert allocation_count(coord) == base
    with shmpool.attach(coord.name) as reader:
        got = reader.load_layer_context(DIM, LAYER)
        assert bytes(got.content[:8]) == stamped_layer(5, LAYER, 100)[:8] and got.verify()


def test_a_reader_killed_after_moving_a_held_generation_into_its_pin_words_leaves_nothing(coord):  # noqa: F811
    _publish(coord, 1)
    base = allocation_count(coord)
    attached = coord.stats()["readers_attached"]
    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    proc = _spawn(children.drop_with_users_then_die, coord.name, DIM, LAYER, ready, results)
    assert _get(results, "first")["stamp"] == (1, LAYER)
    assert ready.wait(DEADLINE)
    _publish(coord, 2)
    proc.join(DEADLINE)
    assert proc.exitcode == -signal.SIGKILL
    _publish(coord, 3)
    wait_for(lambda: _superseded(coord) == 0 and coord.stats()["readers_attached"] == attached, 5,
             "the dead reader's row swept and both superseded generations freed")
    assert allocation_count(coord) == base


@pytest.mark.parametrize("hold", [False, True])
def test_a_reader_stopped_inside_a_lookup_keeps_its_generation_until_it_returns(coord, hold):  # noqa: F811
    """Stopped with its context made and BUSY still set, the reader is about to read generation
    1: the coordinator must keep it, however many publishes and reclaim rounds pass; resumed, it
    returns generation 1's bytes intact (its re-check passed before the publish), then lets go.
    With ``hold`` it also keeps an earlier context: listed as held, not only as a lookup."""
    point = "lookup.made"
    _publish(coord, 1)
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = _spawn(children.fault_at_next_lookup, coord.name, DIM, LAYER, f"{point}:stop", hold, ready, go, results)
    try:
        assert ready.wait(DEADLINE)
        go.set()
        wait_for(lambda: _stopped(proc.pid), DEADLINE, f"the reader stopping at {point}")
        for generation in range(2, 6):
            _publish(coord, generation)
        time.sleep(0.1)  # well past GRACE: a reclaim round that would free it has run
        assert _superseded(coord) == 1, "generation 1 was freed under a reader stopped inside a lookup of it"
        waiting = [p for p in coord.stats()["pins"] if p["pid"] == proc.pid and p["generation"] == 1]
        assert waiting and waiting[0]["answered"] is hold, waiting
        os.kill(proc.pid, signal.SIGCONT)
        report = _get(results, "ok")
        assert report["stamp"] == (1, LAYER) and report["generation"] == 1 and report["verify"], report
        proc.join(DEADLINE)
        wait_for(lambda: _superseded(coord) == 0, 5, "generation 1 freed once the reader let go")
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGCONT)
        proc.join(DEADLINE)


def test_a_reader_stopped_before_its_recheck_sees_the_new_generation_when_resumed(coord):  # noqa: F811
    """Stopped at BUSY with the publish landing before its GENERATION re-check: the coordinator
    keeps generation 1 meanwhile; resumed, the re-check fails and the lookup maps the new one."""
    _publish(coord, 1)
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = _spawn(children.fault_at_next_lookup, coord.name, DIM, LAYER, "lookup.busy:stop", False, ready, go, results)
    try:
        assert ready.wait(DEADLINE)
        go.set()
        wait_for(lambda: _stopped(proc.pid), DEADLINE, "the reader stopping at lookup.busy")
        g = _publish(coord, 2)
        time.sleep(0.05)
        assert _superseded(coord) == 1
        os.kill(proc.pid, signal.SIGCONT)
        report = _get(results, "ok")
        # Its re-check ran after the publish: the new generation, never generation 1's memory.
        assert report["stamp"] == (g, LAYER) and report["generation"] == g and report["verify"], report
        proc.join(DEADLINE)
        wait_for(lambda: _superseded(coord) == 0, 5, "generation 1 freed once the reader moved on")
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGCONT)
        proc.join(DEADLINE)


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"
