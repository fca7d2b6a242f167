"""The job board: request/response slots in shared memory, one robust mutex, futex wake-ups.

Why shared memory (and not POSIX message queues or pipes): a slot lets a response point into
shared memory instead of carrying bytes, message queues do not exist on macOS and cap messages at
a few KiB, and the per-job cost is a lock round and a wake-up (docs/performance.md). The flow,
each step one call into the compiled core (shmpool/_core/_board.pyx), each one lock round:

    client:  submit: pop a free slot (or sleep on FREE_SEQ until one is freed), write the
             request, push the slot on the queue -> wake one worker sleeping on Q_TAIL
    worker:  take: pop the queue, mark RUNNING -> run the job -> finish: write the response,
             mark DONE, push the slot on its client's ring -> wake the client sleeping on TAIL
    client:  completed: pop the ring (DONE -> DELIVERED), decode -> release: push the slot on
             the free stack (or in the next submit's round) -> wake a submitter waiting for one

Capacity is the free stack, a fact derived from the slots' states (shmpool/jobs/slot_states.py
lists every change a state may make). Wake-ups are futexes on the very words that change, so a
sleeper never misses a change made before it slept; a death between a change and its wake-up
delays a sleeper by at most its slice (every sleeper also wakes on its own and looks again),
and the supervisor's :meth:`JobBoard.supervise` re-sends such wake-ups once per round. A holder
that dies inside the lock leaves the structures half updated; the next locker gets EOWNERDEAD
from the kernel and runs :meth:`JobBoard.heal` first (shmpool/jobs/board_repair.py). The
coordinator requeues slots of dead workers and settles those of dead clients.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

import numpy as np
import posix_ipc
from ..substrate._log import logger

from .._core import BoardCore, RobustMutex, SharedWords
from .._core._sync import fence
from ..errors import AttachError, ClientClosed
from ..substrate._proc import is_alive, my_identity
from ..substrate.names import segment_name
from ..substrate.segments import Segment
from .board_repair import BoardRepair
from .board_stats import BoardStatistics
from .jobs_layout import (CC, CHANNEL_COLS, CORE_INDICES, JOBS_MAGIC, JW, SC, SLOT_COLS, BoardState, JobsLayout, JobsView,
                          SlotRow, SlotState, Status)
from .arg_spill import ArgumentsLeft, ArgumentsRef, answer_arguments, mark_kept, read_arguments
from .spill import NO_SPILL, Response, SpillRef, read_spill, write_spill

__all__ = ["JobBoard"]

JOBS = "jobs"
WAIT_SLICE = 0.1   # seconds a submitter sleeps for a slot before looking again on its own
_COLS, _CCOLS = SLOT_COLS, CHANNEL_COLS
_ST, _SEQ, _CPID, _CSTART, _REQ, _RESP, _STATUS, _SPOOL, _DEADLINE = (
    int(c) for c in (SC.STATE, SC.SEQ, SC.CLIENT_PID, SC.CLIENT_START, SC.REQ_LEN, SC.RESP_LEN, SC.STATUS,
                     SC.SPILL_POOL, SC.DEADLINE_NS))
_RUNNING, _ORPHANED = int(SlotState.RUNNING), int(SlotState.ORPHANED)
_W_STATE = int(JW.STATE)
_ASLEEP, _FREE_TOP, _Q_TAIL = int(JW.REAPER_ASLEEP), int(JW.FREE_TOP), int(JW.Q_TAIL)
_ACCEPTING = int(BoardState.ACCEPTING)
_STOPPING_REASON = "the coordinator is stopping; no new jobs are accepted"
_TAKEN = (SlotState.RUNNING, SlotState.ORPHANED)
_CLOSED_REASON = "close() was called while it waited for a free job slot"


class _Wakeup:
    """posix_ipc.Semaphore's ``acquire(timeout)`` / ``release()`` over the workers' futex wait,
    for the worker loop written against the ``jobs-pending`` semaphore the core replaced
    (``JobBoard.pending_sem``; new code calls :meth:`JobBoard.wait_pending`). ``acquire``
    returns at once while there is something to take (the queue is the truth, not a count),
    else sleeps; BusyError after ``timeout`` as before."""

    value = 0  # no count to peek at: nothing piles up

    def __init__(self, wait: Callable[[float | None], bool], wake: Callable[[], None], name: str) -> None:
        self._wait, self._wake, self.name = wait, wake, name

    def acquire(self, timeout: float | None = None) -> None:
        if not self._wait(timeout):
            raise posix_ipc.BusyError(f"{self.name}: nothing within {timeout} s")

    def release(self) -> None:
        self._wake()

    def close(self) -> None:
        """Nothing to close: the board owns the words."""


class JobBoard(BoardRepair, BoardStatistics):
    """A mapped jobs segment and its mutex (create: coordinator; attach: everyone else)."""

    def __init__(self, name: str, seg: Segment, view: JobsView, *, owner: bool) -> None:
        self.name = name
        self.owner = owner
        self._seg = seg
        self.v = view
        # Large results whose worker died before handing them over, found by requeue_worker;
        # the supervising coordinator frees them (the board has no allocation table).
        self.stranded_spills: list[SpillRef] = []
        # Spilled arguments of jobs whose client let go while they ran (orphaned): the
        # supervising coordinator adopts them (shmpool/jobs/arg_spill.py); and those of orphaned
        # jobs whose worker died too, which it frees.
        self.orphaned_args: list[ArgumentsRef] = []
        self.stranded_args: list[ArgumentsRef] = []
        self._words = SharedWords(seg.mm)
        self.lock = RobustMutex(self._words, int(JW.LOCK_MUTEX), int(JW.LOCK_OWNER_PID), int(JW.LOCK_RECOVERIES),
                                f"{name} jobs", lambda _pid: self.heal(), "jobs")
        self.core = BoardCore(self._words, self.lock, view.layout, CORE_INDICES)
        self.pending_sem = _Wakeup(self.wait_pending, self.core.wake_queue, f"{name} pending")

    # ----------------------------------------------------------------- creation / attach

    @classmethod
    def create(cls, name: str, *, slots: int = 256, channels: int = 64, payload: int = 64 * 1024) -> "JobBoard":
        lay = JobsLayout.compute(slots, channels, payload)
        seg = Segment.create(segment_name(name, JOBS), lay.size, reserve=True)
        try:
            view = JobsView(seg.mm, lay)
            w = view.words
            w[JW.SLOTS], w[JW.PAYLOAD], w[JW.CHANNELS] = slots, payload, channels
            view.free[:] = np.arange(slots - 1, -1, -1)  # pop order 0, 1, 2, ...
            w[JW.FREE_TOP] = slots
            view.slots[:, SC.SPILL_POOL] = NO_SPILL
            view.slots[:, SC.ARG_RECORD] = -1  # no spilled arguments
            w[JW.STATE] = BoardState.ACCEPTING
            board = cls(name, seg, view, owner=True)
            board.lock.initialize()  # before the magic: nobody attaches (and locks) until it is made
            w[JW.MAGIC] = JOBS_MAGIC
        except BaseException:
            seg.close()
            seg.unlink()
            raise
        return board

    @classmethod
    def attach(cls, name: str) -> "JobBoard":
        seg = Segment.attach(segment_name(name, JOBS), instance=name)
        head = np.frombuffer(seg.mm, dtype="<i8", count=8)
        if int(head[JW.MAGIC]) != JOBS_MAGIC:
            del head
            seg.close()
            raise AttachError(name=name, reason="jobs segment not initialised (no workers configured?)")
        lay = JobsLayout.compute(int(head[JW.SLOTS]), int(head[JW.CHANNELS]), int(head[JW.PAYLOAD]))
        del head
        return cls(name, seg, JobsView(seg.mm, lay), owner=False)

    @property
    def payload(self) -> int:
        """Bytes a slot's request area, and its response area, hold (larger responses spill)."""
        return self.v.layout.payload

    @property
    def slot_count(self) -> int:
        """Slots on the board: its capacity in requests queued or running at once."""
        return self.v.layout.slots

    @property
    def closed(self) -> bool:
        """True once :meth:`close` unmapped the board in this process."""
        return self.v.slots is None

    # ----------------------------------------------------------------- clients

    def claim_channel(self, *, timeout: float | None = None) -> int:
        """Take a free client channel (or one whose client died); AttachError if none is left."""
        pid, start = my_identity()
        v = self.v
        spills: list[SpillRef] = []
        left = ArgumentsLeft()
        freed = 0
        self.lock.acquire(timeout)
        try:
            rows = v.channels
            for k in range(len(rows)):
                owner = int(rows[k, CC.PID])
                if owner == 0 or not is_alive(owner, int(rows[k, CC.START])):
                    if owner:  # its dead client's slots must not reach us through this ring
                        freed = self._settle_channel_locked(k, spills, left)
                    self._clear_channel_locked(k)
                    rows[k, CC.START] = start
                    rows[k, CC.PID] = pid
                    break
            else:
                raise AttachError(name=self.name, reason=f"all {len(rows)} client channels are in use")
        finally:
            self.lock.release()
        self.core.wake_free(freed)
        if self.owner:
            # Spilled results of a dead client found while claiming its channel. Their blocks were
            # transferred to that client, so the table's dead-owner reclaim frees them; a client
            # has no business freeing another process's blocks, and only the owner drains this list.
            self.stranded_spills.extend(spills)
            self.orphaned_args.extend(left.orphaned)
            self.stranded_args.extend(left.ended)
        return k

    def release_channel(self, channel: int, left: ArgumentsLeft | None = None) -> list[SpillRef]:
        """Give the channel back, settling every slot still addressed to it: queued requests are
        cancelled, running ones orphaned (freed when their worker finishes), finished ones freed.
        Returns the spilled results of the finished ones: the caller owns and frees them.
        ``left`` receives the spilled arguments of the jobs settled: those orphaned (their worker
        reads them still: the caller hands them to the coordinator) and the others (the caller
        frees them), shmpool/jobs/arg_spill.py.

        Only the process that claimed the channel may release it (AttachError otherwise): a
        child forked from a client, releasing what it inherited, would hand its parent's live
        channel to the next ``claim_channel`` and split the parent's results between two clients."""
        spills: list[SpillRef] = []
        with self.lock:
            self._check_channel_owner_locked(channel)
            freed = self._settle_channel_locked(channel, spills, left)
            self._clear_channel_locked(channel)
        self.core.wake_free(freed)
        return spills

    def _check_channel_owner_locked(self, channel: int) -> None:
        pid, start = my_identity()  # recomputed after fork: a child is never its parent
        row = self.v.channels[channel]
        owner, owner_start = int(row[CC.PID]), int(row[CC.START])
        if (owner, owner_start) != (pid, start):
            whose = f"process {owner}" if owner else "nobody (released already)"
            raise AttachError(name=self.name, reason=f"client channel {channel} belongs to {whose}, not to this "
                                                     f"process ({pid}): not released")

    def wait_completions(self, channel: int, timeout: float | None) -> bool:
        """Block until this channel's ring holds a finished slot; False after ``timeout`` s.

        A futex wait on the ring's TAIL word: returns at once if an entry is there already.
        Ctrl-C interrupts it; other signals resume it. Call :meth:`completed` to take them."""
        return bool(self.core.wait_ring(channel, timeout))

    def submit(self, channel: int, request: bytes | memoryview, *, timeout: float | None,
               release: tuple[int, int] | None = None, alive: Callable[[], bool] | None = None,
               arguments: ArgumentsRef | None = None, abandoned: Callable[[], bool] | None = None) -> tuple[int, int]:
        """Put a request in a free slot and queue it; returns (slot, seq).

        Blocks while every slot is busy; posix_ipc.BusyError once ``timeout`` has passed, and
        LockTimeout if the board's lock stays held (a stopped process) past it. ``release``: a
        DELIVERED (slot, seq) of ours to free in the same lock round (Client.call's last answer).
        ``alive``: asked after every timed-out wait for a slot; False (the coordinator is gone)
        ends the wait with AttachError, as does a board that stopped accepting.
        ``arguments``: the allocation of the request's spilled arguments (arg_spill.py).
        ``abandoned``: asked after every wait for a slot; True (the client was closed) ends the
        wait with ClientClosed, so that close() detaches now instead of after this submit.
        """
        w = self.v.words_mv
        if w[_W_STATE] != _ACCEPTING:
            raise AttachError(name=self.name, reason=_STOPPING_REASON)
        pid, start = my_identity()
        rel_slot, rel_seq = release if release is not None else (-1, 0)
        arg_record, arg_serial = arguments if arguments is not None else (-1, 0)
        core = self.core
        deadline = None if timeout is None else time.monotonic() + timeout
        # The first try is the whole job path when a slot is free: one call into the core, which
        # refuses a request too large for a slot (RequestTooLarge) before taking the lock.
        slot, seq = core.submit(channel, request, pid, start, timeout, rel_slot, rel_seq, arg_record, arg_serial)
        if slot >= 0:
            return slot, seq
        while True:
            rel_slot = -1  # freed by the first try
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise posix_ipc.BusyError(f"no free job slot within {timeout} s")
            # ``seq`` is FREE_SEQ as the full board was seen under the lock: any slot freed
            # since then changed it, and the wait returns at once.
            wait = WAIT_SLICE if remaining is None else min(WAIT_SLICE, remaining)
            woken = core.wait_free(channel, seq, wait)
            if w[_W_STATE] != _ACCEPTING:
                raise AttachError(name=self.name, reason=_STOPPING_REASON)
            if abandoned is not None and abandoned():
                raise ClientClosed(name=self.name, reason=_CLOSED_REASON)
            if not woken and alive is not None and not alive():
                raise AttachError(name=self.name, reason="the coordinator is gone")
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            slot, seq = core.submit(channel, request, pid, start, remaining, -1, 0, arg_record, arg_serial)
            if slot >= 0:
                return slot, seq

    def submit_many(self, channel: int, requests: list[bytes], *, timeout: float | None,
                    alive: Callable[[], bool] | None = None, arguments: list[ArgumentsRef | None] | None = None,
                    abandoned: Callable[[], bool] | None = None) -> Iterator[list[tuple[int, int]]]:
        """:meth:`submit` for a batch, in as few lock rounds as free slots allow: yields the
        (slot, seq) of each run of requests queued, in order, until all are (a consumer that
        stops early leaves the rest unsubmitted). Blocks while the board is full, as submit.
        ``arguments``: per request, its spilled arguments or None (arg_spill.py)."""
        refs = None if arguments is None or not any(arguments) else [
            (-1, 0) if ref is None else (ref.record, ref.serial) for ref in arguments]
        w = self.v.words_mv
        pid, start = my_identity()
        core = self.core
        deadline = None if timeout is None else time.monotonic() + timeout
        done = 0
        while done < len(requests):
            if w[_W_STATE] != _ACCEPTING:
                raise AttachError(name=self.name, reason=_STOPPING_REASON)
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            queued, seen = core.submit_many(channel, requests[done:], pid, start, remaining,
                                            None if refs is None else refs[done:])
            if queued:
                done += len(queued)
                yield queued
                continue
            if remaining is not None and remaining <= 0:
                raise posix_ipc.BusyError(f"no free job slot within {timeout} s")
            woken = core.wait_free(channel, seen, WAIT_SLICE if remaining is None else min(WAIT_SLICE, remaining))
            if not woken and alive is not None and not alive():
                raise AttachError(name=self.name, reason="the coordinator is gone")
            if abandoned is not None and abandoned():
                raise ClientClosed(name=self.name, reason=_CLOSED_REASON)

    def cancel(self, slot: int, seq: int, *, timeout: float = 1.0) -> bool:
        """Withdraw a request that no worker has taken yet (False if it ran, or the lock is wedged).
        Its spilled arguments are then the caller's to free (read them first: :meth:`arguments`)."""
        try:
            self.lock.acquire(timeout)
        except TimeoutError:
            return False
        try:
            row = self.v.slots[slot]
            if int(row[SC.SEQ]) != seq or int(row[SC.STATE]) != SlotState.SUBMITTED:
                return False
            row[SC.STATE] = SlotState.CANCELLED
            row[SC.END_CANCELLED] += 1
            return True
        finally:
            self.lock.release()

    def completed(self, channel: int) -> list[int]:
        """Pop every slot index pushed to this client's ring (DONE -> DELIVERED; one consumer, no
        lock). Each is marked DELIVERED before the head moves past it, so heal never re-pushes it."""
        return list(self.core.completed(channel))

    def spin_for_ring(self, channel: int, seconds: float) -> bool:
        """Busy-wait up to ``seconds`` for this client's ring to receive an entry (low-latency
        mode); True if one arrived. Spins in C without the GIL."""
        return bool(self.core.spin_ring(channel, seconds))

    def spin_for_queue(self, seconds: float) -> bool:
        """Busy-wait up to ``seconds`` for a queued request (a worker's low-latency mode)."""
        return bool(self.core.spin_queue(seconds))

    def response(self, slot: int) -> Response:
        """What a finished slot holds: its seq, status, and bytes in the slot or a spill."""
        slots, r = self.v.slots_mv, slot * _COLS
        if slots[r + _SPOOL] == NO_SPILL:  # the common case, checked inline: one call fewer per job
            return Response(slots[r + _SEQ], slots[r + _STATUS], self.v.response_area(slot)[:slots[r + _RESP]], None)
        return Response(slots[r + _SEQ], slots[r + _STATUS], None, read_spill(slots, slot))

    def arguments(self, slot: int) -> ArgumentsRef | None:
        """The spilled arguments of the request in ``slot`` (the worker that runs it), or None."""
        return read_arguments(self.v.slots_mv, slot)

    def answer_arguments(self, slot: int) -> ArgumentsRef | None:
        """The spilled arguments the reader of the answer in ``slot`` frees: None if there are
        none or the worker kept them (arg_spill.answer_arguments)."""
        return answer_arguments(self.v.slots_mv, slot)

    def mark_kept(self, slot: int, seq: int, kept: bool) -> None:
        """Worker, before finishing request ``seq``: whether it kept its spilled arguments."""
        mark_kept(self.v.slots_mv, slot, seq, kept)

    def slot_row(self, slot: int) -> SlotRow:
        """A named snapshot of ``slot``'s row (no lock: for diagnostics and tests)."""
        return SlotRow.of(self.v.slots_mv[slot * _COLS:(slot + 1) * _COLS])

    def is_running(self, slot: int, seq: int) -> bool:
        """Whether request ``seq`` of ``slot`` is in a worker's hands now (no lock: one look)."""
        slots, r = self.v.slots_mv, slot * _COLS
        return slots[r + _SEQ] == seq and slots[r + _ST] in (_RUNNING, _ORPHANED)

    def client_of(self, slot: int) -> tuple[int, int]:
        """(pid, start token) of the client that submitted the slot's request."""
        slots, r = self.v.slots_mv, slot * _COLS
        return slots[r + _CPID], slots[r + _CSTART]

    # ----------------------------------------------------------------- the reaper's long sleeps

    def reaper_may_sleep(self) -> bool:
        """Coordinator: raise JW.REAPER_ASLEEP, then True if every slot is free (nothing to
        supervise until a job is taken, and its worker will post the wake semaphore); else lower
        it again and return False.

        Dekker's pattern with :meth:`claim_reaper_wake`: the flag's store, a fence, then the load
        of FREE_TOP here; a submit's pop of FREE_TOP, the worker's take, a fence, then its load
        of the flag there. Either this sees the slot taken, or that worker sees the flag."""
        words = self._words
        words.store(_ASLEEP, 1)
        fence()
        if words.load(_FREE_TOP) == self.slot_count:
            return True
        words.store(_ASLEEP, 0)
        return False

    def submit_may_answer(self) -> bool:
        """Whether a submit now would not just wait: a slot is free (FREE_TOP > 0), or the board
        stopped accepting (the submit says so at once). A hint for a submit about to copy a
        spilled argument, not a promise (another submit may take the slot first)."""
        return int(self._words.load(_FREE_TOP)) > 0 or int(self._words.load(_W_STATE)) != _ACCEPTING

    def enqueued(self) -> int:
        """JW.Q_TAIL: requests ever queued (submits and requeues); the reaper compares it round to
        round to tell a board that was just used from one quiet for a while."""
        return int(self._words.load(_Q_TAIL))

    def reaper_awake(self) -> None:
        """Coordinator, when its reaper wakes: workers need not post it any more."""
        self._words.store(_ASLEEP, 0)

    def claim_reaper_wake(self) -> bool:
        """Worker, after taking a job: True if the coordinator's reaper sleeps past its short
        round and this worker is the one to post it (to supervise this job: its deadline, its
        worker's death). The flag goes back to 0 here, so a sleep gets one post from workers
        however many jobs are taken before the reaper runs: a reaper descheduled on a loaded
        machine is not handed a backlog of rounds."""
        words = self._words
        fence()  # orders the take's stores before this load (reaper_may_sleep says why)
        return words.load(_ASLEEP) != 0 and words.cas(_ASLEEP, 1, 0)

    def set_deadline(self, slot: int, deadline_ns: int) -> None:
        """Worker: the CLOCK_MONOTONIC ns past which the job it runs in ``slot`` is killed.

        A plain store without the lock: the slot is RUNNING and the caller's; the supervisor
        reads it without the lock and rechecks under it (:meth:`expire`)."""
        self.v.slots_mv[slot * _COLS + _DEADLINE] = deadline_ns

    def accepting(self) -> bool:
        """False once the coordinator stopped taking submissions (:meth:`stop_accepting`)."""
        return bool(self.v.words_mv[_W_STATE] == _ACCEPTING)

    def stop_accepting(self) -> None:
        """Refuse new submissions from now on (AttachError); queued and running jobs go on."""
        self.v.words_mv[_W_STATE] = BoardState.STOPPING
        self.core.wake_free(0x7FFFFFFF)  # submitters waiting for a slot hear it now

    def release_slot(self, slot: int, seq: int, *, timeout: float | None = None) -> None:
        """Return a delivered slot to the free stack (by the client that consumed it)."""
        self.core.release(((slot, seq),), timeout)

    def release_slots(self, slots: Iterable[tuple[int, int]], *, timeout: float | None = None) -> None:
        """Return several delivered (slot, seq) pairs under one lock acquisition.

        A pair is freed only while that slot is still DELIVERED with that seq: a second release
        of the same answer (a deferred one, or one its channel's release settled already) is a
        no-op instead of freeing a slot someone else now uses."""
        if slots:
            self.core.release(slots, timeout)

    def slot_seq(self, slot: int) -> int:
        return int(self.v.slots_mv[slot * _COLS + _SEQ])

    # ----------------------------------------------------------------- workers

    @staticmethod
    def identity() -> tuple[int, int]:
        """This process's (pid, start token) as the board records its workers and clients: what
        a worker's job loop hands the core's steps when it calls them directly."""
        return my_identity()

    def wait_pending(self, timeout: float | None) -> bool:
        """Worker: block until a request is queued; False after ``timeout`` s (a futex wait on
        Q_TAIL, returning at once if the queue is not empty)."""
        return bool(self.core.wait_queue(timeout))

    def take(self) -> tuple[int, int] | None:
        """Pop the next request for this worker: (slot, seq), or None if the queue is empty."""
        pid, start = my_identity()
        taken: tuple[int, int] | None = self.core.take(pid, start)
        return taken

    def request(self, slot: int) -> memoryview:
        return self.v.request_area(slot)[:self.v.slots_mv[slot * _COLS + _REQ]]

    def stage_spill(self, slot: int, seq: int, spill: SpillRef) -> bool:
        """Record where a large result lies *before* its ownership moves to the client, so that
        if this worker dies in between, :meth:`requeue_worker` finds the blocks and frees them."""
        with self.lock:
            row = self.v.slots[slot]
            if int(row[SC.SEQ]) != seq or int(row[SC.STATE]) not in _TAKEN:
                return False
            write_spill(self.v.slots_mv, slot, spill)
            return True

    def finish(self, slot: int, seq: int, status: Status, response: bytes | None, *,
               take_next: bool = False) -> tuple[bool, tuple[int, int] | None]:
        """Hand the slot and its response to the client. ``response`` None means the result was
        staged with :meth:`stage_spill`. Returns (delivered, next): delivered is False if nobody
        will read it (the job was taken away, or its client left: a staged spill is then the
        caller's to free); with ``take_next`` the next queued request is taken in the same lock
        round (a worker under load pays one lock round per job instead of two)."""
        pid, start = my_identity()
        done: tuple[bool, tuple[int, int] | None] = self.core.finish(slot, seq, int(status), response, take_next,
                                                                      pid, start)
        return done

    # ----------------------------------------------------------------- lifetime

    def unlink(self) -> None:
        """Remove the board's segment by name (owner only; idempotent). The board has no other
        name: its mutex and wake-up words live in the segment."""
        self._seg.unlink()

    def close(self) -> None:
        """Unmap the board in this process (idempotent). A lock held by a thread of ours keeps
        the words mapped until the process ends (logged at debug level)."""
        if self.v.slots is None:
            return
        self.core.close()
        self.v.release()
        self._seg.close()
        logger.debug("job board of {!r} closed", self.name)
