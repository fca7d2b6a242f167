"""The jobs segment, byte by byte (docs/shm-layout.md, "Jobs segment", lists the same fields).

    words     int64[JOB_WORDS]                    lock holder, counters, futex words; the robust
                                                   mutex in words 56-63 (as in the control segment,
                                                   so one RobustMutex layout serves both)
    free      int64[slots]                        stack of free slot indices (FREE_TOP entries)
    queue     int64[slots]                        ring of submitted slot indices (Q_HEAD..Q_TAIL)
    slots     int64[slots, SLOT_COLS]             one row per request/response slot
    channels  int64[channels, CHANNEL_COLS]       one row per connected client
    rings     int64[channels, slots]              per client: ring of completed slot indices
    data      bytes[slots, 2 * payload]           per slot: request area, then response area

A slot is at most once in the queue and at most once in one completion ring, so rings of
``slots`` entries never overflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

import numpy as np

from ..substrate.layout import align_section

if TYPE_CHECKING:
    import mmap

__all__ = ["JobWord", "SlotCol", "ChannelCol", "BoardState", "SlotState", "Status", "JW", "SC", "CC", "SLOT_COLS",
           "CHANNEL_COLS", "MUTEX_WORDS", "CORE_INDICES", "JobsLayout", "JobsView", "SlotRow", "JOBS_MAGIC", "LATENCY_BOUNDS_NS"]

JOBS_MAGIC = 0x53484D504A4F4237  # "SHMPJOB7" (3: capacity from the free stack; 4: robust mutex, futex
                                 # words; 5: WAKE_PENDING, which a process of 4 would never clear;
                                 # 6: ARG_RECORD/ARG_SERIAL, spilled arguments a worker of 5 would
                                 # receive as unknown extension values; 7: ARG_KEPT, which a client
                                 # of 6 would not read, freeing arguments a worker still holds)


class JobWord(IntEnum):
    """Words of the jobs segment (int64 each). Who writes each word, and how, is beside it: "lock"
    means plain stores by the holder of the board's mutex; "atomic" means a sequentially
    consistent read-modify-write by anyone, outside the lock (shmpool/_core/shm_sync.h)."""
    LOCK_OWNER_PID = 0     # as in layout.W: the mutex holder's pid (holder only; 0 before unlocking)
    UNUSED_1 = 1           # 1-2: the flock lock's start token and waiting flag, gone with it
    UNUSED_2 = 2
    LOCK_RECOVERIES = 3    # atomic: times a holder died inside the lock (the next locker repaired)
    MAGIC = 4              # JOBS_MAGIC, written last at creation
    SLOTS = 5
    PAYLOAD = 6            # bytes of each request area and each response area
    CHANNELS = 7
    FREE_TOP = 8           # number of entries on the free stack
    Q_HEAD = 9             # next queue position to take (monotonic; index = Q_HEAD % SLOTS)
    Q_TAIL = 10            # next queue position to fill (lock; release store). Also the futex
                           # idle workers sleep on: every enqueue changes it
    STATE = 11             # BoardState
    FREE_SEQ = 12          # lock, atomic add: +1 at every push onto the free stack; the futex that
                           # submitters waiting for a slot sleep on (read under the lock when full)
    QUEUE_SLEEPERS = 13    # atomic: workers inside a futex wait on Q_TAIL (a submit wakes one
                           # only if non-zero; a worker killed asleep leaves it one too high:
                           # later submits make a needless FUTEX_WAKE, never miss a sleeper)
    WAKE_PENDING = 14      # atomic: 1 while a worker woken for the queue has not left its wait
                           # yet; a submit that finds 1 makes no FUTEX_WAKE of its own (that
                           # worker drains the queue, and a worker that takes a job with more
                           # queued wakes the next). Cleared by every worker leaving its wait,
                           # timed out or not, so a waker that died leaves it set one slice at most
    # 16: a job total, now derived from the slots' END_* columns
    REQUEUED = 15          # taken back from dead workers
    REAPER_ASLEEP = 16     # 1 while the coordinator's reaper sleeps past its 20 ms round (every
                           # slot free: nothing to supervise); a worker that takes a job then posts
                           # its wake semaphore. Store 1 + fence by the reaper before its last look
                           # at FREE_TOP, store 0 when it wakes; a worker fences between its take
                           # and its load of this word, and CASes 1 -> 0 before it posts (one
                           # post per sleep; JobBoard.reaper_may_sleep, claim_reaper_wake).
                           # Was the CANCELLED total; zero (never asleep) is a correct default
    WORKERS_STARTED = 17
    WORKER_DEATHS = 18
    LATENCY_COUNT = 19     # jobs finished by a worker (histogram total)
    LATENCY_SUM_NS = 20    # sum of their latencies: submitted -> response stored, in ns
    LATENCY_BUCKET0 = 21   # LATENCY_BOUNDS_NS buckets (cumulative counts are derived), then +Inf
    FREE_WAITERS = 40      # atomic: submitters inside a futex wait on FREE_SEQ (sum of CC.WAITING,
                           # incremented before it and decremented after it, so never below it)
    REPAIRS = 41           # invariants the supervisor found broken and restored (JobBoard.heal)
    LOCK_MUTEX = 56        # 56-63: the board's pthread_mutex_t (robust, process-shared), 64 bytes


# Upper bounds of the job latency histogram (submitted -> response stored by the worker), ns.
LATENCY_BOUNDS_NS = tuple(int(us * 1000) for us in (
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 10_000_000))
JOB_WORDS = 64
MUTEX_WORDS = 8  # bytes of a pthread_mutex_t (40 on glibc x86_64/aarch64) rounded up to a cache line
assert JobWord.LATENCY_BUCKET0 + len(LATENCY_BOUNDS_NS) + 1 <= JobWord.FREE_WAITERS < JobWord.LOCK_MUTEX
assert JobWord.LOCK_MUTEX + MUTEX_WORDS == JOB_WORDS


class BoardState(IntEnum):
    """JobWord.STATE: whether the board takes new submissions."""
    ACCEPTING = 1
    STOPPING = 2       # the coordinator drains: submit raises AttachError


class SlotCol(IntEnum):
    """Columns of a slot row."""
    STATE = 0
    SEQ = 1            # +1 at every submission into this slot; futures remember theirs
    CLIENT_PID = 2
    CLIENT_START = 3
    CHANNEL = 4        # completion ring to push to
    WORKER_PID = 5
    WORKER_START = 6
    REQ_LEN = 7
    RESP_LEN = 8       # bytes in the response area, or of the spill allocation
    STATUS = 9         # Status
    ATTEMPTS = 10      # times a worker died while running this request
    SPILL_POOL = 11    # -1: the response is in the response area; else a table allocation
    SPILL_FIRST = 12
    SPILL_RECORD = 13
    SPILL_SERIAL = 14
    SUBMITTED_NS = 15
    # How this slot's jobs ended, counted by whoever ended one, right after the state change.
    # Totals are sums over the slots (submitted = sum of SEQ), so a death between a state store
    # and its count is a gap the supervisor can see per slot and close (JobBoard.heal).
    END_OK = 16
    END_ERROR = 17
    END_CANCELLED = 18     # withdrawn, answered at stop, or abandoned by a dead client
    # CLOCK_MONOTONIC ns past which the running job is killed (its job_timeout), 0 for none.
    # Written by the worker running it, once it starts the job (the slot is RUNNING and its own);
    # zeroed at submit and at requeue, so a RUNNING slot never shows an earlier job's deadline.
    # Read without the lock by the pool supervisor, which rechecks under it (JobBoard.expire).
    DEADLINE_NS = 19
    # The allocation of the request's spilled arguments (shmpool/jobs/arg_spill.py): its record
    # and serial in the allocation table, -1 / 0 for none. Written with the request at submit,
    # under the lock, and left in place until the next submit into the slot; read by the worker
    # that runs it, and by whoever orphans the slot or takes it from a dead worker.
    ARG_RECORD = 20
    ARG_SERIAL = 21
    # The SEQ of the request whose worker kept a view of its spilled arguments past the job's
    # return (arg_spill.py): that worker owns the blocks now and frees them once the last view
    # goes, so the answer's reader must not. Any other value (0, an earlier request's SEQ): not
    # kept. Written by the worker running it (RUNNING and its own) after it took the blocks over
    # and before its finish; zeroed when the slot leaves a dead or killed worker.
    ARG_KEPT = 22


SLOT_COLS = 23


class ChannelCol(IntEnum):
    """Columns of a channel (client) row."""
    PID = 0            # 0 = free
    START = 1
    HEAD = 2           # consumer position in the ring (written only by the client)
    TAIL = 3           # producer position (lock; release store by the worker that delivers).
                       # Also the futex the client's completion wait sleeps on
    WAITING = 4        # atomic: this client's submitters sleeping for a free slot
    RING_SLEEPERS = 5  # atomic: this client's threads inside a futex wait on TAIL


CHANNEL_COLS = 6


class SlotState(IntEnum):
    FREE = 0
    SUBMITTED = 1      # in the queue
    RUNNING = 2        # taken by WORKER_PID
    DONE = 3           # response written, slot index pushed to the client's ring
    CANCELLED = 4      # still in the queue; the worker that pops it frees it
    ORPHANED = 5       # running, but its client died; freed when the worker finishes
    DELIVERED = 6      # popped from the ring by its client, which frees it once decoded


class Status(IntEnum):
    OK = 0
    ERROR = 1


# The short names the rest of the code and docs/shm-layout.md grew up with.
JW, SC, CC = JobWord, SlotCol, ChannelCol

# What the compiled core's slot transitions need of this layout (shmpool._core.BoardCore): the
# numbers are defined here once and handed to it, since the core sits below this package.
CORE_INDICES: dict[str, object] = {
    "SLOT_COLS": SLOT_COLS, "CHANNEL_COLS": CHANNEL_COLS, "LATENCY_BOUNDS_NS": LATENCY_BOUNDS_NS,
    **{c.name: int(c) for c in SlotCol}, **{f"S_{s.name}": int(s) for s in SlotState}, "OK": int(Status.OK),
    **{f"W_{w.name}": int(w) for w in JobWord}, **{f"C_{c.name}": int(c) for c in ChannelCol},
}


class SlotRow(NamedTuple):
    """One slot row as read at one instant (JobBoard.slot_row): for diagnostics and tests. The
    job path reads and writes single words instead; a row read without the lock may mix two
    moments of a slot that is changing."""
    state: SlotState
    seq: int
    client_pid: int
    client_start: int
    channel: int
    worker_pid: int
    worker_start: int
    req_len: int
    resp_len: int
    status: Status
    attempts: int
    spill_pool: int
    spill_first: int
    spill_record: int
    spill_serial: int
    submitted_ns: int
    end_ok: int
    end_error: int
    end_cancelled: int
    deadline_ns: int
    arg_record: int
    arg_serial: int
    arg_kept: int

    @classmethod
    def of(cls, words: Iterable[int]) -> "SlotRow":
        """The record of one row's SLOT_COLS int64 words, in SlotCol order."""
        values: list[Any] = [int(w) for w in words]
        values[SlotCol.STATE] = SlotState(values[SlotCol.STATE])
        values[SlotCol.STATUS] = Status(values[SlotCol.STATUS])
        return cls(*values)


assert SlotRow._fields == tuple(c.name.lower() for c in SlotCol) and len(SlotCol) == SLOT_COLS


@dataclass(frozen=True)
class JobsLayout:
    slots: int
    channels: int
    payload: int
    free_offset: int
    queue_offset: int
    slots_offset: int
    channels_offset: int
    rings_offset: int
    data_offset: int
    size: int

    @classmethod
    def compute(cls, slots: int, channels: int, payload: int) -> "JobsLayout":
        off = JOB_WORDS * 8
        free = off = align_section(off)
        queue = off = align_section(off + slots * 8)
        slot_rows = off = align_section(off + slots * 8)
        chans = off = align_section(off + slots * SLOT_COLS * 8)
        rings = off = align_section(off + channels * CHANNEL_COLS * 8)
        data = off = align_section(off + channels * slots * 8)
        size = align_section(off + slots * 2 * payload)
        return cls(slots, channels, payload, free, queue, slot_rows, chans, rings, data, size)


class JobsView:
    """numpy views of a mapped jobs segment (vectorised checks), and flat memoryviews (hot path)."""

    def __init__(self, buf: "mmap.mmap | memoryview | bytearray", lay: JobsLayout) -> None:
        self.layout = lay

        # Any, not an ndarray type: release() sets them to None, and a closed board says so.
        def arr(offset: int, shape: tuple[int, ...]) -> Any:
            return np.frombuffer(buf, dtype="<i8", count=int(np.prod(shape)), offset=offset).reshape(shape)

        self.words = arr(0, (JOB_WORDS,))
        self.free = arr(lay.free_offset, (lay.slots,))
        self.queue = arr(lay.queue_offset, (lay.slots,))
        self.slots = arr(lay.slots_offset, (lay.slots, SLOT_COLS))
        self.channels = arr(lay.channels_offset, (lay.channels, CHANNEL_COLS))
        self.rings = arr(lay.rings_offset, (lay.channels, lay.slots))
        self.data = memoryview(buf)[lay.data_offset:lay.data_offset + lay.slots * 2 * lay.payload]

        def flat(offset: int, count: int) -> memoryview:
            return memoryview(buf)[offset:offset + count * 8].cast("q")

        # The same words as flat int64 memoryviews: one element read or write costs ~40 ns here
        # against ~150 ns through numpy scalar indexing, and the job path does ~40 per job.
        # Row r, column c of slots is slots_mv[r * SLOT_COLS + c]; likewise channels and rings.
        self.words_mv = flat(0, JOB_WORDS)
        self.free_mv = flat(lay.free_offset, lay.slots)
        self.queue_mv = flat(lay.queue_offset, lay.slots)
        self.slots_mv = flat(lay.slots_offset, lay.slots * SLOT_COLS)
        self.channels_mv = flat(lay.channels_offset, lay.channels * CHANNEL_COLS)
        self.rings_mv = flat(lay.rings_offset, lay.channels * lay.slots)

    def request_area(self, slot: int) -> memoryview:
        p = self.layout.payload
        return self.data[slot * 2 * p:slot * 2 * p + p]

    def response_area(self, slot: int) -> memoryview:
        p = self.layout.payload
        return self.data[slot * 2 * p + p:(slot + 1) * 2 * p]

    def release(self) -> None:
        for mv in (self.data, self.words_mv, self.free_mv, self.queue_mv, self.slots_mv, self.channels_mv,
                   self.rings_mv):
            mv.release()
        self.words = self.free = self.queue = self.slots = self.channels = self.rings = None
