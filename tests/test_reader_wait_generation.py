"""reader.wait_generation / await_generation: woken by the coordinator's post, typed timeouts,
no hang when the coordinator dies or stops, one thread per Reader for any number of waiters."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import stat
import threading

import pytest

import _reader_children
import _snapshot_children as children
import _introspect as peek
import shmpool
from _waiting import wait_for
from shmpool.coordinator import Coordinator
from shmpool import AttachError, DimensionNotFound, GenerationTimeout, ReaderClosed
from shmpool.data.gen_wait import wait_semaphore_name
from shmpool.substrate.layout import RD
from shmpool.substrate.trust import sem_path

A = 101


@pytest.fixture
def coord(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=0) as c:
        children.fill_tagged(c, (A,), 0)
        c.crystallize(A)
        yield c


def _publish(coord, tag: int) -> int:
    children.fill_tagged(coord, (A,), tag)
    return coord.crystallize(A)


def _armed_rows(coord) -> int:
    return peek.waiting_readers(coord)


def test_a_reader_process_is_woken_by_the_next_publish(coord):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=children.wait_for_generation, args=(coord.name, A, 1, 120.0, results))
    proc.start()
    try:
        wait_for(lambda: _armed_rows(coord) == 1, 30, "the child armed its wake-up")
        assert results.empty()  # it sleeps: nothing was published after generation 1
        assert _publish(coord, 1) == 2
        assert results.get(timeout=60) == ("ok", 2)
    finally:
        proc.join(30)
    assert proc.exitcode == 0
    wait_for(lambda: _armed_rows(coord) == 0, 10, "the row disarmed")


def test_wait_returns_at_once_for_a_generation_already_published_and_times_out_typed(coord):
    with shmpool.attach(coord.name) as reader:
        assert reader.wait_generation(A, after=0, timeout=0) == 1
        with pytest.raises(GenerationTimeout) as err:
            reader.wait_generation(A, timeout=0.05)
        assert (err.value.dimension_id, err.value.after, err.value.generation) == (A, 1, 1)
        assert isinstance(err.value, TimeoutError)
        with pytest.raises(DimensionNotFound):
            reader.wait_generation(999, timeout=0.05)
        with pytest.raises(shmpool.InvalidId):
            reader.wait_generation(A, after=1.5, timeout=0.05)


def test_the_wake_up_semaphore_is_ours_and_0600_and_gone_after_stop(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=0) as coord:
        children.fill_tagged(coord, (A,), 0)
        coord.crystallize(A)
        reader = shmpool.attach(coord.name)
        with pytest.raises(GenerationTimeout):
            reader.wait_generation(A, timeout=0.01)
        path = sem_path(wait_semaphore_name(coord.name, peek.reader_slot(reader)))
        st = os.stat(path, follow_symlinks=False)
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
        reader.close()
    assert not path.exists()  # and the fixture checks nothing else of the name is left


def test_a_waiter_whose_post_was_lost_still_wakes(coord):
    """The Dekker window (arm vs. publish) can lose a post; the reaper's re-post or, at worst,
    the dispatcher's next slice makes up for it."""
    with shmpool.attach(coord.name) as reader:
        got: list = []
        waiter = threading.Thread(target=lambda: got.append(reader.wait_generation(A, after=1, timeout=60)))
        waiter.start()
        wait_for(lambda: _armed_rows(coord) == 1, 10, "armed")
        with peek.wakeup_posts_lost(coord):  # this publication's post is "lost"
            _publish(coord, 1)
        waiter.join(30)
        assert got == [2]


def test_waiters_fail_when_the_coordinator_is_killed(make_name, sample_dir):
    name = make_name()
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_reader_children.run_coordinator, args=(name, str(sample_dir), ready, stop))
    proc.start()
    reader = None
    try:
        assert ready.wait(60)
        reader = shmpool.attach(name)
        dim = min(reader.dimensions())
        errors: list = []

        def wait() -> None:
            try:
                reader.wait_generation(dim, timeout=None)
            except BaseException as exc:
                errors.append(exc)
        waiter = threading.Thread(target=wait)
        waiter.start()

        async def wait_async():
            with pytest.raises(AttachError) as err:
                await reader.await_generation(dim, timeout=None)
            return err.value
        loop = asyncio.new_event_loop()
        task = loop.create_task(wait_async())
        loop.run_until_complete(asyncio.sleep(0.1))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        waiter.join(10)  # noticed within a slice (0.25 s), not waited for ever
        assert not waiter.is_alive() and isinstance(errors[0], AttachError) and "died" in str(errors[0])
        assert "died" in str(loop.run_until_complete(asyncio.wait_for(task, 10)))
        loop.close()
    finally:
        if reader is not None:
            reader.close()
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
        shmpool.cleanup(name)


def test_waiters_fail_when_the_coordinator_stops_or_their_reader_closes(instance_name, sample_dir):
    coord = Coordinator(instance_name, data_dir=sample_dir, workers=0).start()
    try:
        dim = min(coord.reader().dimensions())
        reader = shmpool.attach(coord.name)
        closing = shmpool.attach(coord.name)
        errors: dict[str, BaseException] = {}

        def wait(key, r) -> None:
            try:
                r.wait_generation(dim, timeout=60)
            except BaseException as exc:
                errors[key] = exc
        threads = [threading.Thread(target=wait, args=("stop", reader)),
                   threading.Thread(target=wait, args=("close", closing))]
        for t in threads:
            t.start()
        wait_for(lambda: _armed_rows(coord) == 2, 10, "both armed")
        closing.close()
        threads[1].join(10)
        assert isinstance(errors["close"], ReaderClosed)
    finally:
        coord.stop()
    threads[0].join(10)
    assert isinstance(errors["stop"], AttachError) and "stopped" in str(errors["stop"])
    reader.close()


def test_many_coroutines_share_one_dispatcher_thread(coord):
    with shmpool.attach(coord.name) as reader:
        other = min(reader.dimensions())

        async def main():
            before = threading.active_count()
            waits = [asyncio.ensure_future(reader.await_generation(A, after=1, timeout=60)) for _ in range(50)]
            late = asyncio.ensure_future(reader.await_generation(other, timeout=0.3))
            await asyncio.sleep(0.1)
            threads = threading.active_count() - before
            await asyncio.get_running_loop().run_in_executor(None, _publish, coord, 1)
            got = await asyncio.gather(*waits)
            with pytest.raises(GenerationTimeout):
                await late
            return threads, got
        threads, got = asyncio.run(main())
        assert threads <= 2  # the dispatcher (and the pin watcher at most), not one per call
        assert got == [2] * 50
        assert reader.wait_generation(A, after=1, timeout=0) == 2


def test_resend_posts_exactly_the_rows_armed_before_the_last_publication(coord):
    from shmpool.data.gen_wait import _open_or_create
    import posix_ipc
    with shmpool.attach(coord.name) as reader:
        sem = _open_or_create(coord.name, peek.reader_slot(reader))  # as its dispatcher would, without one running
        row = peek.reader_row(coord, reader)
        try:
            _publish(coord, 1)
            epoch = peek.pin_epoch(coord)
            row[RD.WAITING] = epoch  # armed at epoch - 1: one publication since, maybe unseen
            peek.resend_wakeups(coord)
            sem.acquire(5)  # posted, by us or by the reaper's round
            row[RD.WAITING] = epoch + 1  # armed after the last publication: nothing to re-send
            while True:
                try:
                    sem.acquire(0)
                except posix_ipc.BusyError:
                    break
            assert peek.resend_wakeups(coord) == 0
            with pytest.raises(posix_ipc.BusyError):
                sem.acquire(0.1)
        finally:
            row[RD.WAITING] = 0
            sem.close()
