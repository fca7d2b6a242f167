"""Reader processes that fork after ``attach``: the children of tests/test_reader_fork.py.

Each scenario runs in a process the test starts with the spawn context (so the test process
itself, which runs the coordinator, never forks). That process attaches, holds one context,
then forks, with ``os.fork`` or the multiprocessing fork context. Results go to JSON files in
``out`` (a forked child has no multiprocessing queue of its own to report through).
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import time
import zlib
from pathlib import Path
from typing import Any

import shmpool
from _reader_children import _stamp

CHECK_SECONDS = 3.0  # how long the survivor re-reads its context while the test publishes


def _write(out: str, name: str, payload: dict[str, Any]) -> None:
    path = Path(out)
    tmp = path / f".{name}.tmp"
    tmp.write_text(json.dumps(payload))
    tmp.rename(path / f"{name}.json")  # atomic: the test never reads half a file


def _wait_file(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _watch(reader, ctx, copy: bytes, dimension_id: int, layer_id: int, seconds: float) -> dict[str, Any]:
    """Re-read the held context and look the layer up afresh for ``seconds``: what changed."""
    changed = unverified = fresh_bad = checks = 0
    generations: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        checks += 1
        changed += bytes(ctx.content) != copy
        unverified += not ctx.verify()
        fresh = reader.load_layer_context(dimension_id, layer_id)
        generations.add(fresh.generation)
        fresh_bad += (zlib.crc32(fresh.content) != fresh.crc32
                      or bytes(fresh.content[:8]) != _stamp(fresh.generation, layer_id))
        del fresh
        time.sleep(0.005)
    return {"checks": checks, "changed": changed, "unverified": unverified, "fresh_bad": fresh_bad,
            "generations": sorted(generations), "held_generation": ctx.generation,
            "text_head": bytes(ctx.content[:8]).hex(), "expected_head": _stamp(ctx.generation, layer_id).hex()}


def _my_pins(reader, generation: int) -> bool:
    """True if a reader row of this very process pins ``generation`` (the child has a row of its own)."""
    me = os.getpid()
    return any(p["pid"] == me and p["generation"] == generation for p in reader.pins())


def _survivor(reader, ctx, copy: bytes, dimension_id: int, layer_id: int, out: str, who: str) -> None:
    try:
        report = _watch(reader, ctx, copy, dimension_id, layer_id, CHECK_SECONDS)
        report["own_row_pins_it"] = _my_pins(reader, ctx.generation)
        report["status"] = "ok"
    except BaseException as exc:  # reported, not raised: the test reads the file
        report = {"status": "error", "error": repr(exc)}
    report["pid"] = os.getpid()
    _write(out, who, report)


def fork_after_attach(name: str, dimension_id: int, layer_id: int, mode: str, out: str, ready) -> None:
    """Attach, hold a context, ``os.fork()``; then per ``mode``:

    * ``parent-exits``: the parent exits at once; the child checks its context for CHECK_SECONDS
      once its parent is gone.
    * ``parent-lets-go``: the parent drops its context and closes its reader, then the child checks.
    * ``child-lets-go``: the child drops its context, closes its reader and exits; then the
      parent checks its own.
    """
    reader = shmpool.attach(name)
    ctx = reader.load_layer_context(dimension_id, layer_id)
    copy = bytes(ctx.content)
    flag = Path(out) / "let-go"
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            if mode == "child-lets-go":
                del ctx  # every reference: its pin is released now
                reader.close()
                gc.collect()
                _write(out, "child", {"status": "ok", "pid": os.getpid()})
            else:
                if mode == "parent-exits":
                    deadline = time.monotonic() + 30
                    while os.getppid() == parent and time.monotonic() < deadline:
                        time.sleep(0.005)
                else:
                    _wait_file(flag, 30)
                _survivor(reader, ctx, copy, dimension_id, layer_id, out, "child")
        finally:
            os._exit(0)
    ready.set()
    if mode == "parent-exits":
        _write(out, "parent", {"status": "ok", "child": pid})
        return  # the process exits now, a normal exit (its reader's row goes with it)
    if mode == "parent-lets-go":
        del ctx
        reader.close()
        gc.collect()
        flag.touch()
        os.waitpid(pid, 0)
        _write(out, "parent", {"status": "ok", "child": pid})
        return
    os.waitpid(pid, 0)  # child-lets-go: the child is gone, having released what it held
    _survivor(reader, ctx, copy, dimension_id, layer_id, out, "parent")


_inherited: dict[str, Any] = {}


def _mp_child(dimension_id: int, layer_id: int, out: str, parent: int) -> None:
    reader, ctx, copy = _inherited["reader"], _inherited["ctx"], _inherited["copy"]
    deadline = time.monotonic() + 30
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.005)
    _survivor(reader, ctx, copy, dimension_id, layer_id, out, "child")


def mp_fork_after_attach(name: str, dimension_id: int, layer_id: int, out: str, ready) -> None:
    """As ``fork_after_attach(mode="parent-exits")``, the child started by multiprocessing's fork
    context (Linux's default before Python 3.14): ``attach()`` then ``Process().start()``."""
    reader = shmpool.attach(name)
    ctx = reader.load_layer_context(dimension_id, layer_id)
    _inherited.update(reader=reader, ctx=ctx, copy=bytes(ctx.content))
    proc = mp.get_context("fork").Process(target=_mp_child, args=(dimension_id, layer_id, out, os.getpid()))
    proc.daemon = False
    proc.start()
    _write(out, "parent", {"status": "ok", "child": proc.pid})
    ready.set()
    os._exit(0)  # exit without joining: the child outlives its parent


def fork_then_lookup(name: str, dimension_id: int, layer_id: int, out: str, ready) -> None:
    """Attach and look something up, fork, and look up again in the child (the parent stays):
    the child's reader works, and pins through a row of the child's own."""
    reader = shmpool.attach(name)
    first = reader.load_layer_context(dimension_id, layer_id)
    pid = os.fork()
    if pid == 0:
        try:
            fresh = reader.load_layer_context(dimension_id, layer_id)
            report = {"status": "ok", "pid": os.getpid(), "generation": fresh.generation,
                      "fresh_ok": bytes(fresh.content[:8]) == _stamp(fresh.generation, layer_id),
                      "own_row_pins_it": _my_pins(reader, fresh.generation),
                      "rows": [r["pid"] for r in reader.stats()["pins"]]}
            with reader.snapshot() as snap:
                report["snapshot_ok"] = snap.load_layer_context(dimension_id, layer_id).verify()
            reader.close()
            _write(out, "child", report)
        except BaseException as exc:
            _write(out, "child", {"status": "error", "error": repr(exc)})
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    ok = first.verify() and bytes(first.content[:8]) == _stamp(first.generation, layer_id)
    _write(out, "parent", {"status": "ok", "pid": os.getpid(), "still_ok": ok,
                           "own_row_pins_it": _my_pins(reader, first.generation)})
    ready.set()
    del first
    reader.close()


def fork_child_stops_in_handover(name: str, dimension_id: int, layer_id: int, mode: str, out: str, ready) -> None:
    """Fork a child that stops (SIGSTOP, fault point ``fork.child``) before taking its row over.

    * ``parent-killed``: the test SIGKILLs this parent, publishes, then continues the child: the
      claimed row was spared by the sweep, so the child takes it over and its context is intact.
    * ``late``: the hand-over window is 0.5 s and the test continues the child after it: the
      child's reader raises ReaderForked, and whatever the child does (drop its context, close
      its reader) leaves this parent's row alone, which the parent then checks.
    """
    from shmpool.data import readers
    from shmpool.substrate import _faults
    if mode == "late":
        readers.HANDOVER_WINDOW = 0.5
    reader = shmpool.attach(name)
    ctx = reader.load_layer_context(dimension_id, layer_id)
    copy = bytes(ctx.content)
    snap = reader.snapshot()
    snap.load_layer_context(dimension_id, layer_id)  # the dimension mapped through the snapshot
    parent = os.getpid()
    _faults.arm("fork.child:stop")
    pid = os.fork()
    if pid == 0:
        try:
            if mode == "parent-killed":
                deadline = time.monotonic() + 30
                while os.getppid() == parent and time.monotonic() < deadline:
                    time.sleep(0.005)
                _survivor(reader, ctx, copy, dimension_id, layer_id, out, "child")
            else:
                try:
                    reader.load_layer_context(dimension_id, layer_id)
                    report: dict[str, Any] = {"status": "ok", "lookup": "ok"}
                except shmpool.ShmPoolError as exc:
                    report = {"status": "ok", "lookup": type(exc).__name__, "message": str(exc)}
                try:
                    snap.load_layer_context(dimension_id, layer_id)
                    report["snapshot_lookup"] = "ok"
                except shmpool.ShmPoolError as exc:
                    report["snapshot_lookup"] = type(exc).__name__
                snap.close()
                del ctx
                reader.close()
                gc.collect()
                _write(out, "child", report)
        finally:
            os._exit(0)
    _faults.arm(None)
    snap.close()
    _write(out, "forked", {"status": "ok", "child": pid, "parent": parent})
    ready.set()
    if mode == "parent-killed":
        time.sleep(600)  # until the test kills this process
        return
    os.waitpid(pid, 0)
    _survivor(reader, ctx, copy, dimension_id, layer_id, out, "parent")


def claim_without_forking(name: str, dimension_id: int, layer_id: int, out: str, ready, done) -> None:
    """Run the before-fork and parent hooks without a fork (as when fork() fails): the row
    claimed for the child that never was must go after its deadline while this process lives."""
    from shmpool.data import fork, readers
    readers.HANDOVER_WINDOW = 0.5
    reader = shmpool.attach(name)
    ctx = reader.load_layer_context(dimension_id, layer_id)
    fork._before()
    fork._after_in_parent()
    _write(out, "claimed", {"status": "ok", "pid": os.getpid(), "generation": ctx.generation})
    ready.set()
    done.wait(120)
    report = {"status": "ok", "pid": os.getpid(), "own_row_pins_it": _my_pins(reader, ctx.generation),
              "intact": ctx.verify()}
    reader.close()
    _write(out, "parent", report)


def fork_with_a_snapshot(name: str, dimension_id: int, layer_id: int, out: str, ready) -> None:
    """Open a snapshot, fork, and exit: the child reads through the inherited snapshot (its
    dimension not yet mapped by it, so the child maps it first, under its own pins) while
    generations go by, and closes it."""
    reader = shmpool.attach(name)
    snap = reader.snapshot()
    generation = snap.generation(dimension_id)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            deadline = time.monotonic() + 30
            while os.getppid() == parent and time.monotonic() < deadline:
                time.sleep(0.005)
            bad = checks = 0
            seen: set[int] = set()
            end = time.monotonic() + CHECK_SECONDS
            while time.monotonic() < end:
                ctx = snap.load_layer_context(dimension_id, layer_id)
                checks += 1
                bad += not ctx.verify() or bytes(ctx.content[:8]) != _stamp(generation, layer_id)
                seen.add(reader.load_layer_context(dimension_id, layer_id).generation)
                del ctx
                time.sleep(0.005)
            report = {"status": "ok", "checks": checks, "bad": bad, "generation": generation,
                      "current_generations": sorted(seen), "own_row_pins_it": _my_pins(reader, generation)}
            snap.close()
            reader.close()
        except BaseException as exc:
            report = {"status": "error", "error": repr(exc)}
        _write(out, "child", report)
        os._exit(0)
    _write(out, "parent", {"status": "ok", "child": pid})
    ready.set()
    snap.close()
    reader.close()


def fork_then_wait_and_idle(name: str, dimension_id: int, layer_id: int, out: str, ready) -> None:
    """Attach (with the pin watcher and the generation dispatcher running), fork; in the child,
    whose threads did not cross the fork: look up, wait for the next generation, then idle: its
    own watcher must let go of the superseded generation's pin."""
    reader = shmpool.attach(name)
    reader.load_layer_context(dimension_id, layer_id)
    first = reader.generation(dimension_id)
    reader.wait_generation(dimension_id, after=first - 1, timeout=5)  # starts the dispatcher
    pid = os.fork()
    if pid == 0:
        try:
            seen = reader.load_layer_context(dimension_id, layer_id).generation
            _write(out, "child-ready", {"status": "ok", "generation": seen})
            newer = reader.wait_generation(dimension_id, after=seen, timeout=60)
            time.sleep(1.0)  # idle: a few pin-watch periods
            report = {"status": "ok", "pid": os.getpid(), "seen": seen, "newer": newer,
                      "still_pins_seen": _my_pins(reader, seen)}
            reader.close()
        except BaseException as exc:
            report = {"status": "error", "error": repr(exc)}
        _write(out, "child", report)
        os._exit(0)
    ready.set()
    os.waitpid(pid, 0)
    _write(out, "parent", {"status": "ok", "pid": os.getpid()})
    reader.close()
