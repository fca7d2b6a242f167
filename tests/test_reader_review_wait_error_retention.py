"""A waiter failed by ``Reader.close()`` (or by its coordinator stopping) must not keep what its
frames held: the reader's row, pins and generations go once the caller lets go of its contexts.

The generation waiter used to raise its one stored error object in every waiting thread and set
it on every waiting future. Raising an exception object attaches the raiser's traceback to it,
so the waiter's stored error kept the frames of every thread it failed, and their locals (a
context the waiting thread still held); the reader's finalizer registry keeps the waiter for
good, so those contexts, their pins and the reader's row were never given back (found by a
read-path review's close-versus-lookups stress: 0.85 rows leaked per closed reader, until
attach refused with "all 512 reader slots are taken").
"""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path

import pytest

import _introspect as peek
import shmpool
from _small_coord import small_coordinator
from _waiting import wait_for
from shmpool.errors import AttachError, ReaderClosed
from shmpool.substrate.layout import RD


def _seeded(coord) -> None:  # type: ignore[no-untyped-def]
    proto = coord.create_proto_dimension(1, "seed")
    proto.add_layer(1, "hello")
    coord.crystallize(1)


def _wait_holding_a_context(reader: shmpool.Reader, asynchronous: bool, got: list[BaseException]) -> None:
    ctx = reader.load_layer_context(1, 1)  # held by this frame while it waits  # noqa: F841
    try:
        if asynchronous:
            asyncio.run(reader.await_generation(1, timeout=60))
        else:
            reader.wait_generation(1, timeout=60)
    except BaseException as exc:  # noqa: BLE001 - what it raised is the point
        got.append(type(exc))  # type: ignore[arg-type]  # the class only: the test keeps no traceback


@pytest.mark.parametrize("asynchronous", [False, True], ids=["wait_generation", "await_generation"])
def test_a_waiter_failed_by_close_lets_its_readers_row_go(instance_name: str, tmp_path: Path,
                                                          asynchronous: bool) -> None:
    with small_coordinator(instance_name, tmp_path) as coord:
        _seeded(coord)
        rows = coord._inst.control.readers
        reader = shmpool.attach(instance_name)
        slot = peek.reader_slot(reader)
        got: list[BaseException] = []
        waiters = [threading.Thread(target=_wait_holding_a_context, args=(reader, asynchronous, got))
                   for _ in range(2)]
        for t in waiters:
            t.start()
        wait_for(lambda: rows[slot, RD.WAITING] != 0, 30, "the waiters armed")
        reader.close()
        for t in waiters:
            t.join(30)
            assert not t.is_alive(), "a waiter still waits on a closed reader"
        assert got == [ReaderClosed, ReaderClosed]
        del reader, waiters
        gc.collect()
        # The contexts were the waiting threads' locals, and those threads are gone: nothing
        # holds a pin, so the row is given back (by a thread of its own: hence the wait).
        wait_for(lambda: rows[slot, RD.PID] == 0, 10, "the closed reader's row given back")


def test_waiters_failed_by_a_stopping_coordinator_keep_none_of_their_frames(instance_name: str,
                                                                         tmp_path: Path) -> None:
    with small_coordinator(instance_name, tmp_path) as coord:
        _seeded(coord)
        reader = shmpool.attach(instance_name)
        slot = peek.reader_slot(reader)
        rows = coord._inst.control.readers
        got: list[BaseException] = []
        first = threading.Thread(target=_wait_holding_a_context, args=(reader, False, got))
        first.start()
        wait_for(lambda: rows[slot, RD.WAITING] != 0, 30, "the waiter armed")
        coord._inst.mark_stopping()  # what stop() says first; the dispatcher fails every waiter
        first.join(30)
        assert got == [AttachError]
        # The error the dispatcher keeps for later waiters carries none of the first one's frames.
        error = reader._map._waiter._error  # type: ignore[union-attr]
        assert error is not None and error.__traceback__ is None
        reader.close()


def test_each_lookup_refused_after_fork_raises_an_error_of_its_own(instance_name: str, tmp_path: Path) -> None:
    """A forked child without a row of its own refuses every lookup with ReaderForked; the one
    error its mapping keeps must not collect the traceback of each refusal (it grew by a frame
    chain per refused lookup, keeping their locals)."""
    from shmpool.errors import ReaderForked

    with small_coordinator(instance_name, tmp_path) as coord:
        _seeded(coord)
        reader = shmpool.attach(instance_name)
        try:
            mapped = reader._map
            # What MappedGenerations._fork_child leaves in a child whose row was not handed over.
            mapped._fork_error = ReaderForked(name=instance_name, pid=1, parent_pid=1, reason="test")
            mapped._closed = True
            raised = []
            for _ in range(3):
                with pytest.raises(ReaderForked) as err:
                    reader.load_layer_context(1, 1)
                raised.append(err.value)
            assert len({id(e) for e in raised}) == 3
            assert mapped._fork_error.__traceback__ is None
        finally:
            mapped._fork_error = None
            mapped._closed = False
            reader.close()
