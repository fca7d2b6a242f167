"""What the tests look at inside a coordinator, reader or client, each named for what it checks.

``Coordinator.stats()``, ``dump_state()`` and ``Reader.instance`` answer most questions and tests
use them directly. A few checks need the objects behind them: the job board's words (who waits
for a slot, who holds the lock), the publisher's superseded generations and its commit, a
reader's slot. They live here, one function per question, so a test says what it checks rather
than which private attribute it reads, and a rename inside the coordinator is one edit here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from shmpool.jobs.jobs_layout import CC, JW
from shmpool.substrate.layout import RD, W

if TYPE_CHECKING:
    from shmpool.coordinator import Coordinator
    from shmpool.data.reader import Reader
    from shmpool.jobs.client import Client
    from shmpool.jobs.jobboard import JobBoard


# ----------------------------------------------------------------------------- the job board

def job_board(coord: Coordinator) -> JobBoard:
    """The coordinator's job board, for checks of its slot table and free stack themselves."""
    board: JobBoard = coord._board
    return board


def job_counts(coord: Coordinator) -> dict[str, int]:
    """Slots free, queued, running; jobs submitted, completed, failed, cancelled; clients; repairs."""
    return job_board(coord).counts()


def free_slot_waiters(coord: Coordinator) -> int:
    """Submitters registered as waiting for a free slot (each costs a post when a slot frees)."""
    return int(job_board(coord).v.words[JW.FREE_WAITERS])


def channels_waiting_for_a_slot(coord: Coordinator) -> int:
    """Channels that still count a submitter sleeping for a free slot (CC.WAITING)."""
    return int(job_board(coord).v.channels[:, CC.WAITING].astype(bool).sum())


def board_lock_holder(coord: Coordinator) -> int | None:
    """The pid holding the job board's lock, or None."""
    owner = job_board(coord).lock.owner()
    return owner or None


def worker_deaths(coord: Coordinator) -> list[Any]:
    """The pool's record of worker deaths noticed so far (pid, exit status, what it means)."""
    return list(coord._pool.deaths)


# ----------------------------------------------------------------------------- publishing

def superseded_generations(coord: Coordinator) -> list[Any]:
    """Generations replaced by a publish whose blocks are not freed yet (a reader may pin them)."""
    return list(coord._publisher.snapshot()[1])


def published(coord: Coordinator, dimension_id: int) -> Any:
    """The current publication of a dimension (its generation, blocks and layer index)."""
    return coord._publisher.current[dimension_id]


def publish_sequence(coord: Coordinator) -> int:
    """The commit sequence word: odd while a commit is in progress, +2 per commit."""
    return int(coord._inst.control.words[W.PUBLISH_SEQ])


@contextmanager
def commit_in_progress(coord: Coordinator) -> Iterator[None]:
    """Hold a commit open (its sequence odd) without publishing anything, until the block ends."""
    publisher = coord._publisher
    with publisher._lock, publisher.directory.commit():
        yield


@contextmanager
def wakeup_posts_lost(coord: Coordinator) -> Iterator[None]:
    """Publications inside the block post no wake-up to generation waiters (a lost post)."""
    wakeups = coord._publisher.wakeups
    notify: Callable[[], int] = wakeups.notify
    wakeups.notify = lambda: 0
    try:
        yield
    finally:
        wakeups.notify = notify


def resend_wakeups(coord: Coordinator) -> int:
    """Post again to every waiter armed before the last publication; return how many were posted."""
    return int(coord._publisher.wakeups.resend())


def waiting_readers(coord: Coordinator) -> int:
    """Readers whose row says they wait for a generation."""
    return int((coord._inst.control.readers[:, RD.WAITING] != 0).sum())


def evict(coord: Coordinator, dimension_id: int) -> None:
    """Evict a dimension's current publication now, as capacity management would at 85%."""
    coord._capacity.evict(published(coord, dimension_id))


def spill_dir(coord: Coordinator) -> Any:
    """The folder the coordinator spills evicted dimensions into."""
    return coord._capacity.spill_dir


# ----------------------------------------------------------------------------- readers and clients

def reader_slot(reader: Reader) -> int:
    """The reader's row in the instance's reader table (names its wake-up semaphore)."""
    return int(reader._slot)


def pool_mappings(coord_or_reader: Coordinator | Reader) -> list[tuple[int, int] | None]:
    """(first address, one past the last) of each pool segment as this object maps it; None if unmapped."""
    import numpy as np

    inst = coord_or_reader._inst
    out: list[tuple[int, int] | None] = []
    for seg in inst.pool_segments:
        if seg is None:
            out.append(None)
            continue
        base = int(np.frombuffer(seg.mm, dtype=np.uint8, count=1).__array_interface__["data"][0])
        out.append((base, base + seg.size))
    return out


def pool_memory(coord_or_reader: Coordinator | Reader, pool: int) -> Any:
    """Pool segment ``pool`` as this object maps it, as a numpy uint8 array (writable if the mapping is)."""
    import numpy as np

    return np.frombuffer(coord_or_reader._inst.pool_segments[pool].mm, dtype=np.uint8)


def client_has_future_for(client: Client, slot: int) -> bool:
    """True if the client still routes answers arriving in ``slot`` to a future."""
    return slot in client._futures


def reader_row(coord: Coordinator, reader: Reader) -> Any:
    """The reader's row of the control segment's reader table, writable (RD columns)."""
    return coord._inst.control.readers[reader_slot(reader)]


def pin_epoch(coord: Coordinator) -> int:
    """The publication epoch word: +1 per publication, what a waiting reader arms against."""
    return int(coord._inst.control.words[W.PIN_EPOCH])


def publisher(coord: Coordinator) -> Any:
    """The coordinator's publisher, for tests of its own checks (what it refuses to place)."""
    return coord._publisher


@contextmanager
def proto_set_aside(coord: Coordinator, dimension_id: int) -> Iterator[None]:
    """Inside the block the coordinator does not know its proto (or edit) of ``dimension_id``, so
    the dimension can be republished meanwhile; the proto is back afterwards, now stale."""
    proto = coord._protos.pop(dimension_id)
    try:
        yield
    finally:
        coord._protos[dimension_id] = proto
