"""The reaper's capacity work (cold compression, eviction, reload) racing a publication of the
same dimension by the program: the program's generation must stay the one readers get.

Each capacity step takes the generation it works on, works on it for a while (compresses it,
spills it, reads its file), then publishes. If the program publishes that dimension meanwhile
(crystallize, an edit), the step's result is out of date: publishing it anyway would put the
old content back as a newer generation, and readers would lose the program's publication
without any error. The window is a step's whole duration (milliseconds for a large dimension);
the tests hold the reaper inside it with an event (a timing gate, not a fault) while the main
thread publishes, then let it go, and read the layer from another process.

The waits are generous deadlines that only catch a hang.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import zlib
from typing import Any, Callable

import pytest

import _reader_children as children
import shmpool
from shmpool import PoolSpec
from shmpool.coordinator import Coordinator
from shmpool.coordinator.capacity import CapacityPolicy

KiB, MiB = 1024, 1024 * 1024
POOLS = (PoolSpec(64 * KiB, 64),)  # 4 MiB
LIMIT = 4 * MiB
HANG = 30.0  # seconds: only a hang takes this long

OLD, NEW = b"o" * (100 * KiB), b"N" * (100 * KiB)


class Gate:
    """Holds the reaper thread at one call until the test lets it go; passes every other call."""

    def __init__(self, wrapped: Callable[..., Any], when: Callable[..., bool]) -> None:
        self.wrapped, self.when = wrapped, when
        self.reached, self.go, self.left = threading.Event(), threading.Event(), threading.Event()
        self.used = False
        self.outcome: object = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.used or threading.current_thread() is threading.main_thread() or not self.when(*args, **kwargs):
            return self.wrapped(*args, **kwargs)
        self.used = True
        self.reached.set()
        assert self.go.wait(HANG), "the test never let the reaper go"
        try:
            self.outcome = self.wrapped(*args, **kwargs)
            return self.outcome
        except BaseException as exc:
            self.outcome = exc
            raise
        finally:
            self.left.set()


def _read_in_child(name: str, dimension_id: int, layer_id: int) -> int:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=children.read_layers, args=(name, dimension_id, [layer_id], results))
    proc.start()
    status, payload = results.get(timeout=60)
    proc.join(30)
    assert status == "ok", payload
    [(_, crc, ok)] = payload["layers"]
    assert ok
    return int(crc)


def _wait_for(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _publish(coord: Coordinator, dimension_id: int, layers: int, content: bytes) -> int:
    proto = coord.create_proto_dimension(dimension_id, f"dim{dimension_id}")
    for lid in range(1, layers + 1):
        proto.add_layer(lid, content)
    return coord.crystallize(dimension_id)


def _generation(coord: Coordinator, dimension_id: int) -> int:
    """The dimension's generation in the directory (an evicted one's too)."""
    publisher = coord._publisher
    assert publisher is not None
    entry = publisher.directory.find(dimension_id)
    assert entry is not None
    return int(publisher.directory.generation(entry))


def _edit_layer_1(coord: Coordinator, dimension_id: int) -> int:
    proto = coord.edit_dimension(dimension_id)
    proto.add_layer(1, NEW)
    return coord.crystallize(dimension_id)


def test_cold_compression_does_not_republish_a_generation_the_program_replaced(instance_name):
    policy = CapacityPolicy(compress_cold=True, cold_after=0.05, sample_interval=0.02, evict=False, pool_growth=0)
    with Coordinator(instance_name, workers=0, capacity=policy) as coord:
        publisher = coord._publisher
        assert publisher is not None
        gate = Gate(publisher.place, lambda *a, **kw: bool(kw.get("compressed")))
        publisher.place = gate  # type: ignore[method-assign]
        _publish(coord, 5, 8, OLD)
        assert gate.reached.wait(HANG), "dimension 5 was never compressed"
        edited = _edit_layer_1(coord, 5)  # while the reaper compresses the generation before it
        gate.go.set()
        assert gate.left.wait(HANG)
        assert _generation(coord, 5) >= edited
        assert _read_in_child(instance_name, 5, 1) == zlib.crc32(NEW)


def test_eviction_does_not_evict_a_generation_the_program_published_with_the_old_ones_bytes(instance_name, tmp_path):
    policy = CapacityPolicy(spill_dir=tmp_path, sample_interval=0.02, pool_growth=0)
    with Coordinator(instance_name, workers=0, pools=POOLS, memory_limit=LIMIT, capacity=policy) as coord:
        capacity = coord._capacity
        assert capacity is not None
        gate = Gate(capacity._spill, lambda pub: pub.dimension_id == 7)
        capacity._spill = gate  # type: ignore[method-assign]
        _publish(coord, 7, 35, OLD)  # ~3.5 MiB: past the 85% eviction threshold
        assert gate.reached.wait(HANG), "dimension 7 was never evicted"
        edited = _edit_layer_1(coord, 7)  # while the reaper writes the generation before it out
        gate.go.set()
        assert gate.left.wait(HANG)
        assert _generation(coord, 7) >= edited
        # Evicted or not: a reader gets the edited layer (reloaded, if it was evicted).
        assert _read_in_child(instance_name, 7, 1) == zlib.crc32(NEW)


def test_reload_does_not_put_back_an_evicted_generation_the_program_replaced(instance_name, tmp_path):
    policy = CapacityPolicy(spill_dir=tmp_path, sample_interval=0.02, pool_growth=0)
    with Coordinator(instance_name, workers=0, pools=POOLS, memory_limit=LIMIT, capacity=policy) as coord:
        publisher = coord._publisher
        assert publisher is not None
        _publish(coord, 7, 35, OLD)
        _wait_for(lambda: 7 in publisher.evicted and coord.stats()["superseded_pending"] == 0)
        spill = str(publisher.evicted[7].file)
        gate = Gate(publisher.place, lambda *a, **kw: kw.get("source") == spill)
        publisher.place = gate  # type: ignore[method-assign]
        # A reader asks for it back (and waits for the reload in a thread of its own).
        with shmpool.attach(instance_name) as reader:
            waiting = threading.Thread(target=reader.load_layer_context, args=(7, 1), daemon=True)
            waiting.start()
            assert gate.reached.wait(HANG), "dimension 7 was never reloaded"
            published = _publish(coord, 7, 2, NEW)  # while the reaper copies the evicted one back
            gate.go.set()
            assert gate.left.wait(HANG)
            waiting.join(HANG)
            assert not waiting.is_alive()
        assert _generation(coord, 7) >= published
        assert _read_in_child(instance_name, 7, 1) == zlib.crc32(NEW)
        assert _read_in_child(instance_name, 7, 2) == zlib.crc32(NEW)
        with pytest.raises(shmpool.LayerNotFound):  # the program's 2 layers, not the evicted 35
            coord.reader().load_layer_context(7, 3)


def test_two_evictions_of_one_generation_keep_the_spill_file_the_winner_reloads_from(instance_name, tmp_path):
    # make_room runs in the reaper and in a crystallize that needs room: both may pick the same
    # generation and spill it to the same file; the loser's EditConflict must not remove it.
    policy = CapacityPolicy(spill_dir=tmp_path, sample_interval=0.02, pool_growth=0, evict=False)
    with Coordinator(instance_name, workers=0, pools=POOLS, memory_limit=LIMIT, capacity=policy) as coord:
        capacity, publisher = coord._capacity, coord._publisher
        assert capacity is not None and publisher is not None
        _publish(coord, 7, 8, OLD)
        [pub] = [p for p in publisher.snapshot()[0] if p.dimension_id == 7]
        capacity.evict(pub)  # the winner
        with pytest.raises(shmpool.EditConflict):
            capacity.evict(pub)  # the loser, with the same generation in hand
        assert publisher.evicted[7].file.exists()
        assert _read_in_child(instance_name, 7, 1) == zlib.crc32(OLD)  # reloaded from it
