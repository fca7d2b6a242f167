"""Threads crystallizing, editing and filling the same dimensions at once.

Two defects, found by a three-thread hammer (create / edit / crystallize with and without
``keep`` on two dimension ids):

* Holds leaked. Two crystallizes of one edit could interleave (nothing serialized them), and a
  crystallize could pop another thread's new proto of the same id: edits' holds on base
  generations were taken twice or never let go, so superseded generations were never freed
  (9 generations, 22 allocations left over after one 8 s run). Now a crystallize of a proto
  holds its lock throughout (edit_dimension judging it stale too), and consumes only itself.
* A proto-dimension's layer set could be cached stale for good: the builder is not thread-safe,
  and a crystallize wrote from the live one while another thread's add_layer changed it, so
  its cached layout (of the old layer set) outlived the change and every later crystallize
  failed with RegionFormatError ("holds 25 layers of 'd2', expected 28"). Now a crystallize
  writes a copy taken under the proto's lock.

Only typed errors are expected on the way (a proto consumed or replaced by another thread:
DimensionNotFound / InvalidLayer / EditConflict; LayerNotFound for a layer removed meanwhile).
The deadlines only catch a hang.
"""

from __future__ import annotations

import random
import threading
import time

from shmpool import PoolSpec
from shmpool.coordinator import Coordinator
from shmpool.errors import ShmPoolError

HANG = 30.0  # seconds: only a hang takes this long
RUN = 3.0    # seconds the three threads hammer (the leak showed within 8 s, every time; 3 s kept failing it)
POOLS = (PoolSpec(4096, 4096), PoolSpec(65536, 256))


def _mix(coord: Coordinator, seed: int, until: float, unexpected: list[BaseException]) -> None:
    rnd = random.Random(seed)
    while time.monotonic() < until:
        dim = rnd.choice((1, 2))
        try:
            if rnd.random() < 0.4:
                try:
                    proto = coord.create_proto_dimension(dim, f"d{dim}")
                except ShmPoolError:
                    proto = coord.proto(dim)
                for lid in range(1, rnd.randint(2, 20)):
                    proto.add_layer(lid, bytes([lid]) * rnd.randint(0, 40000))
            else:
                proto = coord.edit_dimension(dim)
                for _ in range(rnd.randint(1, 4)):
                    proto.add_layer(rnd.randint(1, 25), bytes([rnd.randint(0, 255)]) * rnd.randint(0, 3000))
            coord.crystallize(dim, keep=rnd.random() < 0.3)
        except ShmPoolError:
            pass  # another thread's proto, consumed or replaced meanwhile: typed, and expected
        except BaseException as exc:  # what the test judges
            unexpected.append(exc)


def test_concurrent_crystallizes_and_edits_leave_no_generation_held(instance_name):
    with Coordinator(instance_name, workers=0, pools=POOLS, memory_limit=64 << 20) as coord:
        unexpected: list[BaseException] = []
        until = time.monotonic() + RUN  # a duration, not a speed: the more interleavings the better
        threads = [threading.Thread(target=_mix, args=(coord, seed, until, unexpected)) for seed in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG * 4)
            assert not t.is_alive()
        assert unexpected == []
        for dim in (1, 2):  # what is left: published (or refused) now, so that no proto holds anything
            try:
                coord.crystallize(dim)
            except ShmPoolError:
                pass
        deadline = time.monotonic() + HANG
        while coord.stats()["superseded_pending"]:
            assert time.monotonic() < deadline, f"superseded generations never freed: {coord.dump_state()['superseded']}"
            coord.reclaim()
            time.sleep(0.02)
        state = coord.dump_state()
        assert len(state["allocations"]) == sum(len(d["blocks"]) for d in state["dimensions"])


def test_layers_added_while_a_proto_is_crystallized_never_break_it(instance_name):
    with Coordinator(instance_name, workers=0, pools=POOLS, memory_limit=64 << 20) as coord:
        proto = coord.create_proto_dimension(3, "three")
        proto.add_layer(1, b"first")
        done = threading.Event()
        failures: list[BaseException] = []

        def fill() -> None:
            try:
                for lid in range(2, 3001):
                    proto.add_layer(lid, b"x" * (lid % 97))
            finally:
                done.set()

        filler = threading.Thread(target=fill)
        filler.start()
        while not done.is_set():
            try:
                coord.crystallize(3, keep=True)  # a snapshot of the layers added so far
            except BaseException as exc:  # none is expected
                failures.append(exc)
        filler.join(HANG)
        assert failures == []
        coord.crystallize(3)
        assert len(coord.reader().layer_ids(3)) == 3000
