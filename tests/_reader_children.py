"""Reader-side functions run in child processes by the coordinator tests."""

from __future__ import annotations

import os
import signal
import time
import zlib

import shmpool
from shmpool.coordinator import Coordinator


def read_all(name: str, results) -> None:
    """Attach, read every layer, verify every checksum; report counts."""
    try:
        with shmpool.attach(name) as reader:
            dims = reader.dimensions()
            layers = bad = 0
            for dim in dims:
                for ctx in reader.scan(dim):
                    layers += 1
                    bad += not reader.load_layer_context(dim, ctx.layer_id).verify()
            results.put(("ok", {"dimensions": dims, "layers": layers, "bad": bad}))
    except BaseException as exc:
        results.put(("error", repr(exc)))


def hammer(name: str, dimension_id: int, seconds: float, started, stop, results) -> None:
    """Look layers up in a loop until ``stop``, checking each one's bytes against its checksum; keep
    a few old contexts around across generations and re-check them at the end."""
    torn = lookups = 0
    generations: set[int] = set()
    kept = []
    try:
        with shmpool.attach(name) as reader:
            started.set()
            deadline = time.monotonic() + seconds  # only ends a reader nobody told to stop
            i = 0
            while not stop.is_set() and time.monotonic() < deadline:
                ids = reader.layer_ids(dimension_id)
                for lid in ids[i % 7::7]:
                    ctx = reader.load_layer_context(dimension_id, lid)
                    lookups += 1
                    generations.add(ctx.generation)
                    if zlib.crc32(ctx.content) != ctx.crc32 or bytes(ctx.content[:8]) != _stamp(ctx.generation, lid):
                        torn += 1
                    if len(kept) < 50 and lookups % 97 == 0:
                        kept.append((ctx, bytes(ctx.content)))
                i += 1
            changed = sum(bytes(ctx.content) != copy for ctx, copy in kept)
            del kept
            results.put(("ok", {"torn": torn, "lookups": lookups, "generations": sorted(generations),
                                "kept_changed": changed}))
    except BaseException as exc:
        results.put(("error", repr(exc)))


def _stamp(generation: int, layer_id: int) -> bytes:
    return generation.to_bytes(4, "little") + layer_id.to_bytes(4, "little")


def stamped_layer(generation: int, layer_id: int, size: int) -> bytes:
    """Content whose first 8 bytes say which generation and layer it belongs to."""
    body = bytes((generation * 31 + layer_id + i) & 0xFF for i in range(min(size, 256)))
    return _stamp(generation, layer_id) + (body * (size // 256 + 1))[:size - 8]


def pin_then_wait(name: str, dimension_id: int, layer_id: int, ready) -> None:
    """Hold a context (pinning its generation), then wait to be killed."""
    reader = shmpool.attach(name)
    ctx = reader.load_layer_context(dimension_id, layer_id)
    ready.set()
    time.sleep(3600)
    print(ctx)


def run_coordinator(name: str, data_dir: str, ready, stop, workers: int = 0) -> None:
    """A coordinator in its own process (to be SIGKILLed or stopped)."""
    coord = Coordinator(name, data_dir=data_dir, workers=workers).start()
    ready.set()
    stop.wait(3600)
    coord.stop()


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def read_layers(name: str, dimension_id: int, layer_ids: list, results) -> None:
    """Attach, read the given layers (waiting through a reload if the dimension is evicted),
    and report (layer id, crc32 of content, verify()) for each, plus the generation seen."""
    try:
        with shmpool.attach(name) as reader:
            out = []
            for lid in layer_ids:
                ctx = reader.load_layer_context(dimension_id, lid)
                out.append((lid, zlib.crc32(ctx.content), ctx.verify()))
            results.put(("ok", {"layers": out, "generation": reader.generation(dimension_id)}))
    except BaseException as exc:
        results.put(("error", repr(exc)))


def hold_until_told(name: str, dimension_id: int, layer_id: int, ready, stop, results) -> None:
    """Hold one context (and nothing else) until ``stop``; then report whether its bytes are
    still the ones first read, and its generation."""
    try:
        with shmpool.attach(name) as reader:
            ctx = reader.load_layer_context(dimension_id, layer_id)
            copy = bytes(ctx.content)
            ready.set()
            stop.wait(600)
            results.put(("ok", {"generation": ctx.generation, "intact": bytes(ctx.content) == copy,
                                "verify": ctx.verify(), "pid": os.getpid()}))
    except BaseException as exc:
        results.put(("error", repr(exc)))


def look_then_idle(name: str, dimension_id: int, layer_id: int, ready, stop) -> None:
    """Look one layer up, keep no context, and make no further call until ``stop``."""
    reader = shmpool.attach(name)
    assert reader.load_layer_context(dimension_id, layer_id).generation >= 1
    ready.set()
    stop.wait(600)
    reader.close()
