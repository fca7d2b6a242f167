"""Child-process functions for tests/test_snapshots.py and tests/test_reader_wait_generation.py."""

from __future__ import annotations

import time

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.substrate import _faults

TAG_LEN = 11  # b"tag:000123:"


_BYTES = bytes(range(256))


def tagged(tag: int, layer_id: int, size: int = 1500) -> bytes:
    """Layer content that starts with the version tag it was published under: byte i of the body
    is (tag + layer_id + i) & 0xFF, made by repeating one rotation of 0..255 (a generator over
    every byte was half of the test process's CPU in the 400-publication snapshot test)."""
    head = f"tag:{tag:06d}:".encode()
    n = size - len(head)
    start = (tag + layer_id) & 0xFF
    return head + ((_BYTES[start:] + _BYTES[:start]) * (n // 256 + 1))[:n]


def fill_tagged(coord: Coordinator, dimension_ids, tag: int, layers: int = 5) -> None:
    for dim in dimension_ids:
        proto = coord.create_proto_dimension(dim, f"tagged-{dim}")
        for lid in range(1, layers + 1):
            proto.add_layer(lid, tagged(tag, lid))


def check_tags(name: str, dims: list, layers: int, stop, results) -> None:
    """Read batches and snapshots spanning ``dims`` until ``stop``; count any that mix tags."""
    try:
        with shmpool.attach(name) as reader:
            path = [(d, lid) for d in dims for lid in range(1, layers + 1)]
            batches = snapshots = mixed_batches = mixed_snapshots = 0
            tags: set[bytes] = set()
            while not stop.is_set():
                batch = reader.load_contexts(path)
                seen = {bytes(c.content[:TAG_LEN]) for c in batch}
                mixed_batches += len(seen) != 1
                tags |= seen
                batches += 1
                if batches % 4 == 0:
                    with reader.snapshot() as snap:
                        gens = {snap.generation(d) for d in dims}
                        seen = {bytes(c.content[:TAG_LEN]) for d in dims for c in snap.scan(d)}
                        seen |= {bytes(c.content[:TAG_LEN]) for c in snap.load_contexts(path)}
                    mixed_snapshots += len(seen) != 1 or len(gens) != 1
                    tags |= seen
                    snapshots += 1
            results.put(("ok", {"batches": batches, "snapshots": snapshots, "mixed_batches": mixed_batches,
                                "mixed_snapshots": mixed_snapshots, "tags": len(tags)}))
    except BaseException as exc:
        results.put(("error", repr(exc)))


def coordinator_dying_mid_commit(name: str, data_dir: str, dims: list, ready, go) -> None:
    """A coordinator that SIGKILLs itself between the GENERATION stores of a crystallize_many."""
    coord = Coordinator(name, data_dir=data_dir, workers=0).start()
    fill_tagged(coord, dims, 1)
    coord.crystallize_many(dims)
    fill_tagged(coord, dims, 2)
    ready.set()
    go.wait(60)
    _faults.arm("publish_many.half")
    coord.crystallize_many(dims)
    time.sleep(60)  # not reached


def wait_for_generation(name: str, dimension_id: int, after: int, timeout: float, results) -> None:
    """Report what wait_generation returned or raised."""
    try:
        with shmpool.attach(name) as reader:
            got = reader.wait_generation(dimension_id, after=after, timeout=timeout)
            results.put(("ok", got))
    except BaseException as exc:
        results.put(("error", type(exc).__name__, str(exc)))
