"""Child processes of tests/test_coordinator_edit.py: readers that check every layer against the exact
content the edit schedule says its generation must hold."""

from __future__ import annotations

import time
import zlib

import shmpool

LAYERS = 60
SIZE = 6000


def edited_layer(generation: int) -> int:
    """The layer generation ``generation`` (>= 2) replaces; generation 1 writes them all."""
    return (generation * 7) % LAYERS + 1


def written_at(generation: int, layer_id: int) -> int:
    """The generation whose bytes layer ``layer_id`` holds in ``generation``."""
    for g in range(generation, 1, -1):
        if edited_layer(g) == layer_id:
            return g
    return 1


def content(generation: int, layer_id: int) -> bytes:
    stamp = generation.to_bytes(4, "little") + layer_id.to_bytes(4, "little")
    body = bytes((generation * 31 + layer_id + i) & 0xFF for i in range(256))
    return stamp + (body * (SIZE // 256 + 1))[:SIZE + layer_id - 8]


def hammer(name: str, dimension_id: int, seconds: float, started, stop, results) -> None:
    """Look every layer up in a loop until ``stop``; each must be exactly what its generation
    holds. Keep a few contexts across generations and check at the end that their bytes never
    changed."""
    torn = lookups = 0
    generations: set[int] = set()
    kept = []
    try:
        with shmpool.attach(name) as reader:
            started.set()
            deadline = time.monotonic() + seconds  # only ends a reader nobody told to stop
            while not stop.is_set() and time.monotonic() < deadline:
                for ctx in reader.load_contexts([(dimension_id, lid) for lid in range(1, LAYERS + 1)]):
                    lookups += 1
                    g = ctx.generation
                    generations.add(g)
                    if bytes(ctx.content) != content(written_at(g, ctx.layer_id), ctx.layer_id) or \
                            zlib.crc32(ctx.content) != ctx.crc32:
                        torn += 1
                    if len(kept) < 40 and lookups % 89 == 0:
                        kept.append((ctx, bytes(ctx.content)))
            changed = sum(bytes(ctx.content) != copy for ctx, copy in kept)
            del kept
            results.put(("ok", {"torn": torn, "lookups": lookups, "generations": sorted(generations),
                                "kept_changed": changed}))
    except BaseException as exc:
        results.put(("error", repr(exc)))


def hold(name: str, dimension_id: int, layer_id: int, ready, results) -> None:
    """Hold one context, report its generation and bytes, then wait to be killed."""
    reader = shmpool.attach(name)
    ctx = reader.load_layer_context(dimension_id, layer_id)
    results.put((ctx.generation, bytes(ctx.content)))
    ready.set()
    time.sleep(3600)
    print(ctx)
