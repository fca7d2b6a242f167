"""Consistent snapshots across dimensions: crystallize_many, Reader.snapshot, load_contexts."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import time

import pytest

import _snapshot_children as children
import _introspect as peek
import shmpool
from _waiting import wait_for
from shmpool.coordinator import Coordinator
from shmpool import (DimensionEvicted, DimensionNotFound, InvalidArgument, LimitExceeded, SnapshotClosed,
                     SnapshotTimeout)
from shmpool.data.region_builder import RegionBuilder
from shmpool.substrate.layout import W

A, B = 101, 102


@pytest.fixture
def coord(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=0) as c:
        yield c


def _tags(contexts) -> set[bytes]:
    return {bytes(c.content[:children.TAG_LEN]) for c in contexts}


def test_batches_and_snapshots_never_mix_tags_across_crystallize_many(coord):
    children.fill_tagged(coord, (A, B), 0)
    coord.crystallize_many([A, B])
    ctx = mp.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=children.check_tags, args=(coord.name, [A, B], 5, stop, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    try:
        wait_for(lambda: int(coord.stats()["readers_attached"]) >= 2, 30, "both readers attached")
        for tag in range(1, 401):
            children.fill_tagged(coord, (A, B), tag)
            assert coord.crystallize_many([A, B]) == {A: tag + 1, B: tag + 1}
    finally:
        stop.set()
        reports = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
    for status, report in reports:
        assert status == "ok", report
        assert report["mixed_batches"] == 0 and report["mixed_snapshots"] == 0, report
        # They read while the publishes went on, not before or after them.
        assert report["tags"] >= 20 and report["batches"] >= 200 and report["snapshots"] >= 50, report


def test_snapshot_reads_the_old_generation_after_many_publishes_and_frees_it_after_exit(coord):
    children.fill_tagged(coord, (A, B), 0)
    coord.crystallize_many([A, B])
    reader = shmpool.attach(coord.name)
    try:
        snap = reader.snapshot()
        g0 = snap.generation(A)
        old_bytes = bytes(children.tagged(0, 3))
        used_before = int(coord.stats()["used_bytes"])
        for tag in range(1, 21):  # the directory's two slots are long overwritten
            children.fill_tagged(coord, (A,), tag)
            coord.crystallize(A)
        assert reader.generation(A) == g0 + 20
        assert reader.load_layer_context(A, 3).content[:children.TAG_LEN] == b"tag:000020:"
        # First lookup of A through the snapshot comes after the 20 publishes.
        ctx = snap.load_layer_context(A, 3)
        assert ctx.generation == g0 and bytes(ctx.content) == old_bytes and ctx.verify()
        assert _tags(snap.load_contexts([(A, 1), (B, 1), (A, 5)])) == {b"tag:000000:"}
        assert snap.generations[A] == g0 and snap.generations[B] == g0
        coord.reclaim()
        assert (A, g0) in {(p["dimension_id"], p["generation"]) for p in reader.pins()}
        assert int(coord.stats()["used_bytes"]) > used_before  # g0 kept, the 19 between freed
        snap.close()
        with pytest.raises(SnapshotClosed):
            snap.load_layer_context(B, 1)
        assert bytes(ctx.content) == old_bytes and ctx.verify()  # contexts outlive their snapshot
        del ctx
        gc.collect()

        def freed() -> bool:
            coord.reclaim()
            superseded = peek.superseded_generations(coord)
            return all(p.generation != g0 or p.dimension_id != A for p in superseded)
        wait_for(freed, 10, "the snapshot's old generation freed")
        assert (A, g0) not in {(p["dimension_id"], p["generation"]) for p in reader.pins()}
    finally:
        reader.close()


def test_snapshot_covers_every_dimension_and_only_those_of_its_instant(coord):
    reader = shmpool.attach(coord.name)
    try:
        with reader.snapshot() as snap:
            assert snap.generations == {d: reader.generation(d) for d in reader.dimensions()}
            children.fill_tagged(coord, (A,), 7)
            coord.crystallize(A)  # published after the instant
            with pytest.raises(DimensionNotFound):
                snap.load_layer_context(A, 1)
            first = min(snap.generations)
            assert len(list(snap.scan(first))) == len(reader.layer_ids(first))
            with pytest.raises(shmpool.InvalidId):
                snap.load_layer_context(True, 1)
        assert reader.load_layer_context(A, 1).content[:children.TAG_LEN] == b"tag:000007:"
    finally:
        reader.close()


def test_crystallize_many_failure_publishes_nothing_and_leaks_nothing(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=0, memory_limit=64 * 1024 * 1024) as coord:
        reader = shmpool.attach(coord.name)
        try:
            children.fill_tagged(coord, (A,), 1)
            coord.crystallize(A)
            children.fill_tagged(coord, (A,), 2)
            big = coord.create_proto_dimension(B, "too big")
            big.add_layer(1, b"x" * (63 * 1024 * 1024))  # past the 95% refusal line
            gens, used = reader.stats()["generations"], int(coord.stats()["used_bytes"])
            seq = peek.publish_sequence(coord)
            with pytest.raises(LimitExceeded):
                coord.crystallize_many([A, B])
            assert reader.stats()["generations"] == gens  # nothing published...
            assert int(coord.stats()["used_bytes"]) == used  # ...nothing left allocated
            assert peek.publish_sequence(coord) == seq  # no commit began
            assert coord.proto(A) and coord.proto(B)  # and the protos are kept
            with pytest.raises(InvalidArgument):
                coord.crystallize_many([A, A])
            with pytest.raises(DimensionNotFound):
                coord.crystallize_many([A, 999])
            assert reader.load_layer_context(A, 1).content[:children.TAG_LEN] == b"tag:000001:"
            big.remove_layer(1)
            big.add_layer(1, b"small now")
            result = coord.crystallize_many([A, B])
            assert result == {A: gens[A] + 1, B: 1}
            assert peek.publish_sequence(coord) == seq + 2  # one commit for both
        finally:
            reader.close()


def test_snapshot_of_an_evicted_dimension_fails_typed_and_the_reader_still_reloads(coord):
    reader = shmpool.attach(coord.name)
    try:
        dim = min(reader.dimensions())
        lid = reader.layer_ids(dim)[0]
        content = bytes(reader.load_layer_context(dim, lid).content)
        reader.drop_stale()
        peek.evict(coord, dim)
        with reader.snapshot() as snap:
            with pytest.raises(DimensionEvicted) as err:
                snap.load_layer_context(dim, lid)
            assert err.value.dimension_id == dim and err.value.generation == snap.generation(dim)
        assert bytes(reader.load_layer_context(dim, lid).content) == content  # reloaded on request
        with reader.snapshot() as snap:
            assert bytes(snap.load_layer_context(dim, lid).content) == content
    finally:
        reader.close()


def test_load_contexts_and_snapshot_fail_typed_when_the_coordinator_dies_mid_commit(make_name, sample_dir):
    name = make_name()
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=children.coordinator_dying_mid_commit, args=(name, str(sample_dir), [A, B], ready, go))
    proc.start()
    reader = None
    try:
        assert ready.wait(60)
        reader = shmpool.attach(name)
        assert _tags(reader.load_contexts([(A, 1), (B, 1)])) == {b"tag:000001:"}
        go.set()
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL
        words = reader.instance.control.words
        assert int(words[W.PUBLISH_SEQ]) & 1  # killed between the two GENERATION stores
        assert {reader.generation(A), reader.generation(B)} == {1, 2}  # one new, one old
        with pytest.raises(SnapshotTimeout) as err:
            reader.snapshot(timeout=30)  # the dead coordinator is noticed, not waited out
        assert err.value.coordinator_alive is False and err.value.waited < 5
        with pytest.raises(SnapshotTimeout):
            reader.load_contexts([(A, 1), (B, 1)])
        assert reader.load_layer_context(A, 2).verify()  # single lookups still work
    finally:
        if reader is not None:
            reader.close()
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
        shmpool.cleanup(name)


def test_snapshot_waits_out_a_commit_in_progress_then_times_out_typed(coord):
    reader = shmpool.attach(coord.name)
    try:
        with peek.commit_in_progress(coord):  # a commit that never ends
            start = time.monotonic()
            with pytest.raises(SnapshotTimeout) as err:
                reader.snapshot(timeout=0.2)
            assert err.value.coordinator_alive and time.monotonic() - start < 30  # a hang catcher only
            assert peek.publish_sequence(coord) & 1
        assert not peek.publish_sequence(coord) & 1
        with reader.snapshot(timeout=0.2) as snap:
            assert snap.sequence == peek.publish_sequence(coord)
    finally:
        reader.close()


def test_a_snapshot_dropped_without_close_releases_its_pins(coord):
    children.fill_tagged(coord, (A,), 0)
    coord.crystallize(A)
    reader = shmpool.attach(coord.name)
    try:
        snap = reader.snapshot()
        g0 = snap.generation(A)
        children.fill_tagged(coord, (A,), 1)
        coord.crystallize(A)
        reader.drop_stale()
        pinned = lambda: (A, g0) in {(p["dimension_id"], p["generation"]) for p in reader.pins()}
        assert pinned()  # only the snapshot holds it
        del snap
        gc.collect()
        assert not pinned()
        wait_for(lambda: coord.reclaim() >= 0 and all(p.generation != g0 or p.dimension_id != A
                                                      for p in peek.superseded_generations(coord)), 10, "freed")
    finally:
        reader.close()


def test_snapshot_lookups_and_contexts_after_the_reader_closes(coord):
    children.fill_tagged(coord, (A, B), 3)
    coord.crystallize_many([A, B])
    reader = shmpool.attach(coord.name)
    snap = reader.snapshot()
    ctx = snap.load_layer_context(A, 1)
    reader.close()
    with pytest.raises(shmpool.ReaderClosed):
        snap.load_layer_context(B, 1)  # not mapped before the close: nothing new is mapped after it
    assert ctx.content[:children.TAG_LEN] == b"tag:000003:" and ctx.verify()
    snap.close()
    del ctx
    gc.collect()
    wait_for(lambda: int(coord.stats()["readers_attached"]) == 0, 10, "the row released with the last hold")


def test_crystallize_many_directory_full_publishes_nothing(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=0, max_dimensions=15) as coord:
        reader = shmpool.attach(coord.name)
        try:
            children.fill_tagged(coord, (A, B), 1)
            dims, used = reader.dimensions(), int(coord.stats()["used_bytes"])
            with pytest.raises(shmpool.DirectoryFull):
                coord.crystallize_many([A, B])  # room for A's entry, not for B's
            assert reader.dimensions() == dims and int(coord.stats()["used_bytes"]) == used
            with pytest.raises(DimensionNotFound):
                reader.load_layer_context(A, 1)  # its claimed entry reads as unpublished
            assert coord.crystallize(A) == 1  # and is reused
        finally:
            reader.close()


# ----------------------------------------------------------------------------- with the shared layer index

def _live_records(coord) -> set[int]:
    return {a["record"] for a in coord.dump_state()["allocations"]}


def _edit(coord, dim: int, tag: int, layer_ids) -> None:
    proto = coord.edit_dimension(dim)
    for lid in layer_ids:
        proto.add_layer(lid, children.tagged(tag, lid))


def test_a_snapshot_keeps_the_layers_an_edit_replaced_until_it_closes(coord):
    """Shared layers: generation 2 (an edit) replaced layer 3; generation 3 replaces it again, so
    generation 2's edit allocation is used by generation 2 alone. A snapshot pinning generation 2
    keeps that allocation (and the region generation 2 still reads its other layers from) until it
    closes; then it is freed, and nothing the current generation uses is."""
    children.fill_tagged(coord, (A,), 0)
    coord.crystallize(A)
    _edit(coord, A, 2, [3])
    assert coord.crystallize(A) == 2
    reader = shmpool.attach(coord.name)
    try:
        with reader.snapshot() as snap:
            assert snap.generation(A) == 2
            before = _live_records(coord)
            _edit(coord, A, 3, [3])
            assert coord.crystallize(A) == 3
            time.sleep(0.05)  # past GRACE
            coord.reclaim()
            assert before <= _live_records(coord), "nothing generation 2 uses may go while it is pinned"
            ctx = snap.load_layer_context(A, 3)
            assert bytes(ctx.content) == children.tagged(2, 3) and ctx.generation == 2 and ctx.verify()
            assert bytes(snap.load_layer_context(A, 1).content) == children.tagged(0, 1)  # from the region
            assert [bytes(c.content) for c in snap.scan(A)] == \
                [children.tagged(2 if lid == 3 else 0, lid) for lid in range(1, 6)]
            assert bytes(reader.load_layer_context(A, 3).content) == children.tagged(3, 3)
            del ctx
        gc.collect()
        current = {b["record"] for d in coord.dump_state()["dimensions"] for b in d["blocks"]}

        def freed() -> bool:
            coord.reclaim()
            return coord.stats()["superseded_pending"] == 0
        wait_for(freed, 10, "generation 2 released after its snapshot closed")
        assert _live_records(coord) == current, "left: exactly what generation 3 uses"
        assert before - _live_records(coord), "generation 2's own allocations were freed"
    finally:
        reader.close()


def test_crystallize_many_publishes_an_edit_and_a_new_region_as_one_commit(coord, tmp_path):
    children.fill_tagged(coord, (A, B), 0)
    coord.crystallize_many([A, B])
    reader = shmpool.attach(coord.name)
    try:
        words = reader.instance.control.words
        seq = int(words[W.PUBLISH_SEQ])
        _edit(coord, A, 1, [2, 4])
        children.fill_tagged(coord, (B,), 1)
        assert coord.crystallize_many([A, B]) == {A: 2, B: 2}
        assert int(words[W.PUBLISH_SEQ]) == seq + 2, "one commit for both"
        with reader.snapshot() as snap:
            got = {lid: bytes(snap.load_layer_context(A, lid).content) for lid in range(1, 6)}
            assert got == {lid: children.tagged(1 if lid in (2, 4) else 0, lid) for lid in range(1, 6)}
            assert _tags(snap.load_contexts([(B, lid) for lid in range(1, 6)])) == {b"tag:000001:"}
        # An edit whose base moved on fails the whole commit: nothing published, nothing kept allocated.
        _edit(coord, A, 9, [1])                       # an edit of generation 2 ...
        builder = RegionBuilder(A, f"tagged-{A}")
        for lid in range(1, 6):
            builder.add_layer(lid, children.tagged(8, lid))
        builder.write(tmp_path / "a.region")
        assert coord.publish_region_file(tmp_path / "a.region") == 3  # ... whose base moves on
        children.fill_tagged(coord, (B,), 2)
        reader.drop_stale()

        def settled() -> bool:  # so that used_bytes stands still: only what the stale edit holds is left
            coord.reclaim()
            return {(p.dimension_id, p.generation) for p in peek.superseded_generations(coord)} == {(A, 2)}
        wait_for(settled, 10, "superseded generations released, but the stale edit's base")
        seq, used = int(words[W.PUBLISH_SEQ]), int(coord.stats()["used_bytes"])
        with pytest.raises(shmpool.EditConflict):
            coord.crystallize_many([B, A])
        assert int(words[W.PUBLISH_SEQ]) == seq and int(coord.stats()["used_bytes"]) == used
        assert reader.generation(B) == 2 and reader.generation(A) == 3
        assert coord.proto(A).base_generation == 2 and len(coord.proto(B)) == 5  # both protos kept
    finally:
        reader.close()


def test_a_snapshot_holds_the_old_generation_across_a_jump(coord):
    """dask13's explicit generations: crystallize(generation=G) writes the slot not holding the
    current generation, whatever its parity; the snapshot's kept location still finds its own."""
    children.fill_tagged(coord, (A,), 0)
    coord.crystallize(A)
    reader = shmpool.attach(coord.name)
    try:
        with reader.snapshot() as snap:
            for tag, generation in ((1, 4), (2, 6), (3, 9)):  # jumps of both parities
                children.fill_tagged(coord, (A,), tag)
                assert coord.crystallize(A, generation=generation) == generation
            assert reader.generation(A) == 9
            assert _tags(reader.load_contexts([(A, lid) for lid in range(1, 6)])) == {b"tag:000003:"}
            assert snap.generation(A) == 1
            assert _tags(snap.load_contexts([(A, lid) for lid in range(1, 6)])) == {b"tag:000000:"}
        with reader.snapshot() as snap:
            assert snap.generations[A] == 9
            assert _tags(snap.scan(A)) == {b"tag:000003:"}
    finally:
        reader.close()
