"""Reader processes for tests/test_reader_pin_epoch.py: each attaches, looks up, and then either
idles (no call at all) or waits to be told to look again, reporting what it read."""

from __future__ import annotations

import os
import tempfile
import zlib

import shmpool
from shmpool.substrate import _faults


def _stamp(content) -> tuple[int, int]:
    """(generation, layer id) a stamped layer says it belongs to (tests/_reader_children.stamped_layer)."""
    raw = bytes(content[:8])
    return int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")


def look_idle_look(name: str, dimension_id: int, layer_id: int, ready, go, results) -> None:
    """Look one layer up and keep nothing; make no call until ``go``; then look it up again and
    report its stamp, the generation the reader says it read, and its CRC check."""
    try:
        reader = shmpool.attach(name)
        first = reader.load_layer_context(dimension_id, layer_id)
        results.put(("first", {"stamp": _stamp(first.content), "pid": os.getpid()}))
        del first
        ready.set()
        go.wait(600)
        ctx = reader.load_layer_context(dimension_id, layer_id)
        results.put(("ok", {"stamp": _stamp(ctx.content), "generation": ctx.generation, "verify": ctx.verify()}))
        del ctx
        reader.close()
    except BaseException as exc:
        results.put(("error", repr(exc)))


def hold_idle(name: str, dimension_id: int, layer_id: int, what: str, ready, go, results) -> None:
    """Keep one object of a lookup (``what``: the context, only its ``content`` view, only a
    numpy array over it, or a batch) and make no call until ``go``; then report whether the
    bytes are still the ones first read."""
    try:
        reader = shmpool.attach(name)
        if what == "batch":
            held = reader.load_contexts([(dimension_id, layer_id)])
            view = held[0].content
        else:
            ctx = reader.load_layer_context(dimension_id, layer_id)
            held = {"context": ctx, "content": ctx.content, "array": ctx.content}[what]
            if what == "array":
                import numpy as np
                held = np.frombuffer(ctx.content, np.uint8)
            del ctx
            view = held.content if what == "context" else held
        copy = bytes(view)
        del view
        ready.set()
        go.wait(600)
        now = bytes(held.content if what == "context" else held[0].content if what == "batch" else held)
        results.put(("ok", {"stamp": _stamp(copy), "intact": now == copy, "crc": zlib.crc32(now)}))
        del held
        reader.close()
    except BaseException as exc:
        results.put(("error", repr(exc)))


def fault_at_next_lookup(name: str, dimension_id: int, layer_id: int, fault: str, hold: bool, ready, go,
                         results) -> None:
    """Look up once (mapping the generation), arm ``fault`` (``point[:stop]``, firing once), tell
    the parent, wait for ``go``, and look up again, which dies or stops at that point; if it
    comes back (stopped, then continued), report what the second lookup returned. With
    ``hold``, the first context is kept."""
    try:
        reader = shmpool.attach(name)
        first = reader.load_layer_context(dimension_id, layer_id)
        kept = first if hold else None
        del first
        fd, token = tempfile.mkstemp(prefix="pin-epoch-fault-")
        os.close(fd)
        _faults.arm(f"{fault}@{token}")  # once: the slow path after a stop passes the same point
        ready.set()
        go.wait(600)
        ctx = reader.load_layer_context(dimension_id, layer_id)
        _faults.arm(None)
        results.put(("ok", {"stamp": _stamp(ctx.content), "generation": ctx.generation, "verify": ctx.verify(),
                            "kept": None if kept is None else (_stamp(kept.content), kept.verify())}))
        del ctx, kept
        reader.close()
    except BaseException as exc:
        results.put(("error", repr(exc)))


def drop_with_users_then_die(name: str, dimension_id: int, layer_id: int, ready, results) -> None:
    """Hold a context, then let go of the cached generation (``drop_stale`` after a publish),
    dying at the point where the held generation has moved into the pin words and the cache
    word is not cleared yet (fault point ``cache.moved``)."""
    try:
        reader = shmpool.attach(name)
        ctx = reader.load_layer_context(dimension_id, layer_id)
        results.put(("first", {"stamp": _stamp(ctx.content)}))
        ready.set()
        _faults.arm("cache.moved")
        while True:  # until a publish makes the cached generation stale and drop_stale moves it
            reader.drop_stale()
            os.sched_yield()
    except BaseException as exc:
        results.put(("error", repr(exc)))
