"""The job board: request/response slots in shared memory, handed around with semaphores.

Why shared memory and semaphores (and not POSIX message queues): message queues do not exist on
macOS, cap message sizes at a few KiB by default, and measured 39 µs p99 per hop here against 25
µs for a semaphore; a slot also lets a response point into shared memory instead of carrying
bytes. The flow, with the board's lock (a SharedLock the kernel releases when its holder dies)
held only for a few stores:

    client:  lock: pop a free slot (or register as a waiter and sleep on `free`), write the
             request, push the slot on the queue -> post `pending`
    worker:  wait `pending` -> lock: pop the queue, mark RUNNING -> run the job -> write the
             response -> lock: mark DONE, push the slot on its client's ring -> post `ch<k>`
    client:  its completion thread waits on `ch<k>`, drains its ring (DONE -> DELIVERED),
             decodes, frees the slot (lock: push it on the free stack, wake waiters)

Capacity is the free stack, a fact derived from the slots' states, never a semaphore count: the
semaphores only wake sleepers, so a death between two steps can delay a wake-up but never lose a
slot. Every sleeper also wakes on its own after a slice and looks again, and the supervisor's
:meth:`JobBoard.supervise` restores the invariants (docs/architecture.md, "Job board
invariants") once per round:

    free stack  == the FREE slots          queue == the SUBMITTED and CANCELLED slots
    every DONE slot is in its live client's ring, and a ring with entries has its wake-up posted
    a non-empty queue has `pending` posted; waiting submitters with free slots have `free` posted

A holder that dies inside the lock leaves the structures half updated; the next holder runs
:meth:`JobBoard.heal` before anything else. The coordinator requeues slots of dead workers and
settles those of dead clients.
"""

from __future__ import annotations

import bisect
import contextlib
import time

from typing import Callable

import numpy as np
import posix_ipc
from loguru import logger

from ..substrate import _faults
from ..substrate._proc import is_alive, my_identity
from ..errors import AttachError, RequestTooLarge
from .jobs_layout import (CC, CHANNEL_COLS, JOBS_MAGIC, JW, LATENCY_BOUNDS_NS, SC, SLOT_COLS, BoardState, JobsLayout,
                          JobsView, SlotRow, SlotState, Status)
from ..substrate.lock import SharedLock, interrupted_waits_retry
from ..substrate.names import runtime_dir, segment_name, semaphore_name
from ..substrate.platform import SEMAPHORE_VALUES
from ..substrate.segments import Segment
from .spill import NO_SPILL, Response, SpillRef, read_spill, write_spill
from ..substrate.trust import open_semaphore

__all__ = ["JobBoard"]

JOBS = "jobs"
WAIT_SLICE = 0.1   # seconds a submitter sleeps for a slot before looking again on its own
_CAN_PEEK = SEMAPHORE_VALUES
SUPERVISE_WAIT = 0.5  # seconds a supervision step waits for the lock before trying next round
_QUEUED = (SlotState.SUBMITTED, SlotState.CANCELLED)
# Plain ints for the hot path's flat memoryviews (an IntEnum member costs an attribute lookup).
_COLS, _CCOLS = SLOT_COLS, CHANNEL_COLS
(_ST, _SEQ, _CPID, _CSTART, _CHAN, _WPID, _WSTART, _REQ, _RESP, _STATUS, _ATT, _SPOOL, _SFIRST, _SREC,
 _SSER, _SUBNS, _END_OK, _END_ERR, _END_CANC, _DEADLINE) = (int(c) for c in SC)
_FREE, _SUBMITTED, _RUNNING, _DONE, _CANCELLED, _ORPHANED, _DELIVERED = (int(s) for s in SlotState)
_W_FREE_TOP, _W_QH, _W_QT, _W_STATE = int(JW.FREE_TOP), int(JW.Q_HEAD), int(JW.Q_TAIL), int(JW.STATE)
_W_WAITERS = int(JW.FREE_WAITERS)
_W_LATN, _W_LATSUM, _W_LAT0 = int(JW.LATENCY_COUNT), int(JW.LATENCY_SUM_NS), int(JW.LATENCY_BUCKET0)
_C_PID, _C_START, _C_HEAD, _C_TAIL, _C_WAITING = (int(c) for c in (CC.PID, CC.START, CC.HEAD, CC.TAIL, CC.WAITING))
_OK, _ERROR = int(Status.OK), int(Status.ERROR)
_ACCEPTING = int(BoardState.ACCEPTING)
_STOPPING_REASON = "the coordinator is stopping; no new jobs are accepted"
_TAKEN = (SlotState.RUNNING, SlotState.ORPHANED)


def _sem(name: str, kind: str, *, create: bool, initial: int = 0) -> posix_ipc.Semaphore:
    if not create:  # an existing semaphore is used only once proven ours (owner, mode)
        return open_semaphore(semaphore_name(name, kind), instance=name)
    return posix_ipc.Semaphore(semaphore_name(name, kind), posix_ipc.O_CREX, mode=0o600, initial_value=initial)


def _post_if_idle(sem: posix_ipc.Semaphore, times: int = 1) -> int:
    """Post a wake-up nobody has been sent yet; never piles posts onto a sleeper's count."""
    if times <= 0 or (_CAN_PEEK and sem.value > 0):
        return 0
    for _ in range(times):
        sem.release()
    return times


class JobBoard:
    """A mapped jobs segment plus its semaphores (create: coordinator; attach: everyone else)."""

    def __init__(self, name: str, seg: Segment, view: JobsView, sems: dict[str, posix_ipc.Semaphore],
                 *, owner: bool) -> None:
        self.name = name
        self.owner = owner
        self._seg = seg
        self.v = view
        self.free_sem = sems["free"]
        self.pending_sem = sems["pending"]
        self._sems = sems
        self._channel_sems: dict[int, posix_ipc.Semaphore] = {}
        # Large results whose worker died before handing them over, found by requeue_worker;
        # the supervising coordinator frees them (the board has no allocation table).
        self.stranded_spills: list[SpillRef] = []
        self.lock = SharedLock(sems["lock"], view.words_mv, str(runtime_dir() / f"{name}.jobs.lock"),
                               f"{name} jobs", on_recover=lambda _pid: self.heal(), role="jobs")

    # ----------------------------------------------------------------- creation / attach

    @classmethod
    def create(cls, name: str, *, slots: int = 256, channels: int = 64, payload: int = 64 * 1024) -> "JobBoard":
        lay = JobsLayout.compute(slots, channels, payload)
        made: list = []
        try:
            sems = {"lock": _sem(name, "jobs-lock", create=True),
                    "free": _sem(name, "jobs-free", create=True),
                    "pending": _sem(name, "jobs-pending", create=True)}
            made.extend(sems.values())
            for k in range(channels):
                made.append(_sem(name, f"ch{k}", create=True))
            seg = Segment.create(segment_name(name, JOBS), lay.size, reserve=True)
            made.append(seg)
        except BaseException:
            for obj in made:
                obj.unlink()
                if isinstance(obj, Segment):
                    obj.close()
            raise
        for obj in made[3:-1]:
            obj.close()
        view = JobsView(seg.mm, lay)
        w = view.words
        w[JW.SLOTS], w[JW.PAYLOAD], w[JW.CHANNELS] = slots, payload, channels
        view.free[:] = np.arange(slots - 1, -1, -1)  # pop order 0, 1, 2, ...
        w[JW.FREE_TOP] = slots
        view.slots[:, SC.SPILL_POOL] = NO_SPILL
        w[JW.STATE] = BoardState.ACCEPTING
        w[JW.MAGIC] = JOBS_MAGIC
        return cls(name, seg, view, sems, owner=True)

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
        try:
            sems = {"lock": _sem(name, "jobs-lock", create=False), "free": _sem(name, "jobs-free", create=False),
                    "pending": _sem(name, "jobs-pending", create=False)}
        except posix_ipc.ExistentialError:
            seg.close()
            raise AttachError(name=name, reason="job semaphores are gone (coordinator stopped)") from None
        return cls(name, seg, JobsView(seg.mm, lay), sems, owner=False)

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

    def channel_sem(self, channel: int) -> posix_ipc.Semaphore:
        sem = self._channel_sems.get(channel)
        if sem is None:
            sem = self._channel_sems[channel] = _sem(self.name, f"ch{channel}", create=False)
        return sem

    # ----------------------------------------------------------------- clients

    def claim_channel(self, *, timeout: float | None = None) -> int:
        """Take a free client channel (or one whose client died); AttachError if none is left."""
        pid, start = my_identity()
        v = self.v
        spills: list = []
        freed = 0
        self.lock.acquire(timeout)
        try:
            rows = v.channels
            for k in range(len(rows)):
                owner = int(rows[k, CC.PID])
                if owner == 0 or not is_alive(owner, int(rows[k, CC.START])):
                    if owner:  # its dead client's slots must not reach us through this ring
                        freed = self._settle_channel_locked(k, spills)
                    self._clear_channel_locked(k)
                    rows[k, CC.START] = start
                    rows[k, CC.PID] = pid
                    break
            else:
                raise AttachError(name=self.name, reason=f"all {len(rows)} client channels are in use")
            wake = self._wake_count_locked(freed)
        finally:
            self.lock.release()
        self._post_free(wake)
        self._free_spills_later(spills)
        sem = self.channel_sem(k)
        while True:  # a previous owner's unconsumed posts must not wake us for nothing
            try:
                sem.acquire(0)
            except posix_ipc.BusyError:
                break
        return k

    def release_channel(self, channel: int) -> list[SpillRef]:
        """Give the channel back, settling every slot still addressed to it: queued requests are
        cancelled, running ones orphaned (freed when their worker finishes), finished ones freed.
        Returns the spilled results of the finished ones: the caller owns and frees them."""
        spills: list = []
        with self.lock:
            freed = self._settle_channel_locked(channel, spills)
            self._clear_channel_locked(channel)
            wake = self._wake_count_locked(freed)
        self._post_free(wake)
        return spills

    def _settle_channel_locked(self, channel: int, spills: list) -> int:
        """End every slot addressed to ``channel``; returns how many went back to the free stack."""
        v = self.v
        owner = v.channels[channel]
        mine = ((v.slots[:, SC.CHANNEL] == channel) & (v.slots[:, SC.CLIENT_PID] == owner[CC.PID])
                & (v.slots[:, SC.CLIENT_START] == owner[CC.START]))
        return self._abandon_all_locked(np.flatnonzero(mine).tolist(), spills)[0]

    def _abandon_all_locked(self, slots, spills: list) -> tuple[int, int]:
        """Settle every slot of ``slots`` whose client is gone: (freed, affected). One already
        settled (CANCELLED, ORPHANED: a worker frees it) or FREE is left alone."""
        freed = affected = 0
        states = self.v.slots_mv
        for slot in slots:
            if states[slot * _COLS + _ST] in (_FREE, _CANCELLED, _ORPHANED):
                continue
            affected += 1
            freed += self._abandon_locked(slot, spills)
        return freed, affected

    def _clear_channel_locked(self, channel: int) -> None:
        """Free a channel row; its registered waiters stop counting (they left with it)."""
        v = self.v
        v.words[JW.FREE_WAITERS] -= int(v.channels[channel, CC.WAITING])
        v.channels[channel, :] = 0

    def _abandon_locked(self, slot: int, spills: list) -> int:
        """Settle one slot whose client is gone: 1 if it went back to the free stack."""
        row = self.v.slots[slot]
        state = int(row[SC.STATE])
        if state == SlotState.SUBMITTED:
            row[SC.STATE] = SlotState.CANCELLED  # the worker that pops it frees it
            row[SC.END_CANCELLED] += 1
        elif state == SlotState.RUNNING:
            row[SC.STATE] = SlotState.ORPHANED
        elif state in (SlotState.DONE, SlotState.DELIVERED):
            self._take_spill_locked(slot, spills)
            self._free_locked(slot)
            return 1
        return 0

    def _take_spill_locked(self, slot: int, into: list) -> None:
        """Move the slot's spill (if any) into ``into``: whoever drains that list frees it."""
        spill = read_spill(self.v.slots_mv, slot)
        if spill is not None:
            into.append(spill)
            write_spill(self.v.slots_mv, slot, None)

    def submit(self, channel: int, request: bytes | memoryview, *, timeout: float | None,
               release: tuple[int, int] | None = None,
               alive: "Callable[[], bool] | None" = None) -> tuple[int, int]:
        """Put a request in a free slot and queue it; returns (slot, seq).

        Blocks while every slot is busy; posix_ipc.BusyError once ``timeout`` has passed, and
        LockTimeout if the board's lock stays held (a stopped process) past it. ``release``: a
        DELIVERED (slot, seq) of ours to free in the same lock round (Client.call's last answer).
        ``alive``: asked after every timed-out wait for a slot; False (the coordinator is gone)
        ends the wait with AttachError, as does a board that stopped accepting.
        """
        v = self.v
        if len(request) > v.layout.payload:
            raise RequestTooLarge(nbytes=len(request), capacity=v.layout.payload)
        if v.words_mv[_W_STATE] != _ACCEPTING:
            raise AttachError(name=self.name, reason=_STOPPING_REASON)
        deadline = None if timeout is None else time.monotonic() + timeout
        pid, start = my_identity()
        w, slots, chans = v.words_mv, v.slots_mv, v.channels_mv
        waiting = False
        gone: str | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            # A submitter registered as a waiter must get the lock back to deregister, so it
            # gets a short grace beyond its deadline (the promise is timeout + 100 ms).
            self.lock.acquire(None if remaining is None else max(remaining, 0.05 if waiting else 0.0))
            try:
                if release is not None:
                    wake = self._wake_count_locked(self._release_locked(*release))
                    release = None
                    if wake:  # another client waits for a slot: it gets this one
                        self.free_sem.release()
                if waiting:
                    w[_W_WAITERS] -= 1
                    chans[channel * _CCOLS + _C_WAITING] -= 1
                    waiting = False
                    if gone is not None:
                        raise AttachError(name=self.name, reason=gone)
                top = w[_W_FREE_TOP] - 1
                if top >= 0:
                    slot = v.free_mv[top]
                    w[_W_FREE_TOP] = top
                    if _faults.ARMED:
                        _faults.point("submit.popped")
                    r = slot * _COLS
                    seq = slots[r + _SEQ] + 1
                    slots[r + _SEQ] = seq
                    slots[r + _CPID] = pid
                    slots[r + _CSTART] = start
                    slots[r + _CHAN] = channel
                    slots[r + _WPID] = slots[r + _WSTART] = 0
                    slots[r + _REQ] = len(request)
                    slots[r + _RESP] = slots[r + _STATUS] = slots[r + _ATT] = 0
                    slots[r + _SPOOL] = NO_SPILL
                    slots[r + _SUBNS] = time.monotonic_ns()
                    slots[r + _DEADLINE] = 0  # job_timeout: the worker sets it when it starts
                    v.request_area(slot)[:len(request)] = request
                    slots[r + _ST] = _SUBMITTED
                    if _faults.ARMED:
                        _faults.point("submit.filled")
                    tail = w[_W_QT]
                    v.queue_mv[tail % v.layout.slots] = slot
                    w[_W_QT] = tail + 1
                    break
                if remaining is not None and remaining <= 0:
                    raise posix_ipc.BusyError(f"no free job slot within {timeout} s")
                w[_W_WAITERS] += 1
                chans[channel * _CCOLS + _C_WAITING] += 1
                waiting = True
            finally:
                self.lock.release()
            wait = WAIT_SLICE if remaining is None else min(WAIT_SLICE, max(remaining, 0.0))
            try:
                try:
                    self.free_sem.acquire(wait)
                except posix_ipc.SignalError:
                    if not interrupted_waits_retry():
                        raise
            except posix_ipc.BusyError:
                # Look again anyway (a releaser may have died before posting), but first make
                # sure somebody will ever free a slot: not if the coordinator is gone.
                if w[_W_STATE] != _ACCEPTING:
                    gone = _STOPPING_REASON
                elif alive is not None and not alive():
                    gone = "the coordinator is gone"
            except BaseException:
                self._leave_waiters(channel)  # Ctrl-C: no phantom waiter may stay registered
                raise
            if gone is None and w[_W_STATE] != _ACCEPTING:
                gone = _STOPPING_REASON
        if _faults.ARMED:
            _faults.point("submit.queued")
        # A post already pending wakes a worker that drains the whole queue, ours included (it
        # was queued before this check), so a second post would only wake one for nothing.
        _post_if_idle(self.pending_sem)
        return slot, seq

    def _leave_waiters(self, channel: int) -> None:
        try:
            self.lock.acquire(0.05)
        except TimeoutError:
            logger.debug("could not deregister a waiter of channel {}; heal and the post cap cover it", channel)
            return
        try:
            self.v.words_mv[_W_WAITERS] -= 1
            self.v.channels_mv[channel * _CCOLS + _C_WAITING] -= 1
        finally:
            self.lock.release()

    def cancel(self, slot: int, seq: int, *, timeout: float = 1.0) -> bool:
        """Withdraw a request that no worker has taken yet (False if it ran, or the lock is wedged)."""
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
        """Pop every slot index pushed to this client's ring (single consumer: no lock).

        Each slot is marked DELIVERED *before* the head moves past it, so the supervisor, which
        re-pushes DONE slots missing from their ring, never hands one out twice.
        """
        v = self.v
        chans = v.channels_mv
        c = channel * _CCOLS
        head, tail = chans[c + _C_HEAD], chans[c + _C_TAIL]
        if head == tail:
            return []
        n = v.layout.slots
        rings, slots, base = v.rings_mv, v.slots_mv, channel * n
        out = [rings[base + i % n] for i in range(head, tail)]
        for slot in out:
            slots[slot * _COLS + _ST] = _DELIVERED
        chans[c + _C_HEAD] = tail
        return out

    def spin_for_ring(self, channel: int, seconds: float) -> bool:
        """Busy-wait up to ``seconds`` for this client's ring to receive an entry (low-latency
        mode); True if one arrived. Holds the GIL: bounded, and only for a thread that waits."""
        chans, c = self.v.channels_mv, channel * _CCOLS
        until = time.perf_counter() + seconds
        while chans[c + _C_HEAD] == chans[c + _C_TAIL]:
            if time.perf_counter() >= until:
                return False
        return True

    def spin_for_queue(self, seconds: float) -> bool:
        """Busy-wait up to ``seconds`` for a queued request (a worker's low-latency mode)."""
        w = self.v.words_mv
        until = time.perf_counter() + seconds
        while w[_W_QH] == w[_W_QT]:
            if time.perf_counter() >= until:
                return False
        return True

    def response(self, slot: int) -> Response:
        """What a finished slot holds: its seq, status, and bytes in the slot or a spill."""
        slots, r = self.v.slots_mv, slot * _COLS
        if slots[r + _SPOOL] == NO_SPILL:  # the common case, checked inline: one call fewer per job
            return Response(slots[r + _SEQ], slots[r + _STATUS], self.v.response_area(slot)[:slots[r + _RESP]], None)
        return Response(slots[r + _SEQ], slots[r + _STATUS], None, read_spill(slots, slot))

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

    def set_deadline(self, slot: int, deadline_ns: int) -> None:
        """Worker: the CLOCK_MONOTONIC ns past which the job it runs in ``slot`` is killed.

        A plain store without the lock: the slot is RUNNING and the caller's; the supervisor
        reads it without the lock and rechecks under it (:meth:`expire`)."""
        self.v.slots_mv[slot * _COLS + _DEADLINE] = deadline_ns

    def accepting(self) -> bool:
        """False once the coordinator stopped taking submissions (:meth:`stop_accepting`)."""
        return self.v.words_mv[_W_STATE] == _ACCEPTING

    def release_slot(self, slot: int, seq: int, *, timeout: float | None = None) -> None:
        """Return a delivered slot to the free stack (by the client that consumed it)."""
        self.release_slots(((slot, seq),), timeout=timeout)

    def release_slots(self, slots, *, timeout: float | None = None) -> None:
        """Return several delivered (slot, seq) pairs under one lock acquisition.

        A pair is freed only while that slot is still DELIVERED with that seq: a second release
        of the same answer (a deferred one, or one its channel's release settled already) is a
        no-op instead of freeing a slot someone else now uses."""
        if not slots:
            return
        self.lock.acquire(timeout)
        try:
            freed = 0
            for slot, seq in slots:
                freed += self._release_locked(slot, seq)
            if _faults.ARMED:
                _faults.point("release.pushed")
            wake = self._wake_count_locked(freed)
        finally:
            self.lock.release()
        self._post_free(wake)

    def _release_locked(self, slot: int, seq: int) -> int:
        r = slot * _COLS
        slots = self.v.slots_mv
        if slots[r + _ST] != _DELIVERED or slots[r + _SEQ] != seq:
            return 0
        self._free_locked(slot)
        return 1

    def slot_seq(self, slot: int) -> int:
        return self.v.slots_mv[slot * _COLS + _SEQ]

    def _free_locked(self, slot: int) -> None:
        v = self.v
        w = v.words_mv
        v.slots_mv[slot * _COLS + _ST] = _FREE
        top = w[_W_FREE_TOP]
        v.free_mv[top] = slot
        w[_W_FREE_TOP] = top + 1

    def _wake_count_locked(self, freed: int) -> int:
        return min(freed, self.v.words_mv[_W_WAITERS]) if freed else 0

    def _post_free(self, wake: int) -> None:
        # Never more pending posts than sleepers to use them: a waiter counted by mistake must
        # not make the semaphore grow with every release (each stale post is a lock round).
        if wake > 0 and _CAN_PEEK:
            wake -= self.free_sem.value
        for _ in range(wake):
            self.free_sem.release()

    def _free_spills_later(self, spills: list) -> None:
        # Spilled results of a dead client found while claiming its channel. Their blocks were
        # transferred to that client, so the table's dead-owner reclaim frees them; a client
        # has no business freeing another process's blocks, and only the owner drains this list.
        if self.owner:
            self.stranded_spills.extend(spills)

    # ----------------------------------------------------------------- workers

    def take(self) -> tuple[int, int] | None:
        """Pop the next request for this worker: (slot, seq), or None if the queue is empty."""
        w = self.v.words_mv
        if w[_W_QH] == w[_W_QT]:
            # Unlocked peek: a request queued right after it still posted pending_sem, so the
            # worker comes back for it; skipping the lock here halves lock traffic per job.
            return None
        with self.lock:
            taken, freed = self._take_locked()
            wake = self._wake_count_locked(freed)
        self._post_free(wake)
        return taken

    def _take_locked(self) -> tuple[tuple[int, int] | None, int]:
        v = self.v
        w, slots = v.words_mv, v.slots_mv
        pid, start = my_identity()
        freed = 0
        while w[_W_QH] != w[_W_QT]:
            slot = self._pop_queue_locked()
            if _faults.ARMED:
                _faults.point("take.popped")
            r = slot * _COLS
            if slots[r + _ST] == _CANCELLED:
                self._free_locked(slot)
                freed += 1
                continue
            slots[r + _WPID] = pid
            slots[r + _WSTART] = start
            slots[r + _SPOOL] = NO_SPILL
            slots[r + _ST] = _RUNNING
            return (slot, slots[r + _SEQ]), freed
        return None, freed

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
        v = self.v
        slots, r = v.slots_mv, slot * _COLS
        if response is not None:
            v.response_area(slot)[:len(response)] = response
            slots[r + _RESP] = len(response)
            slots[r + _SPOOL] = NO_SPILL
        slots[r + _STATUS] = status
        nxt, freed = None, 0
        with self.lock:
            state = slots[r + _ST]
            if slots[r + _SEQ] != seq or (state != _RUNNING and state != _ORPHANED):
                delivered, channel = False, None
            else:
                latency = time.monotonic_ns() - slots[r + _SUBNS]  # CLOCK_MONOTONIC: system-wide
                w = v.words_mv
                w[_W_LAT0 + bisect.bisect_left(LATENCY_BOUNDS_NS, latency)] += 1
                w[_W_LATN] += 1
                w[_W_LATSUM] += latency
                delivered = state == _RUNNING
                if delivered:
                    channel = self._deliver_locked(slot)
                else:
                    channel = None
                    self._free_locked(slot)
                    freed = 1
                slots[r + (_END_OK if status == _OK else _END_ERR)] += 1
            if take_next:
                nxt, more = self._take_locked()
                freed += more
            wake = self._wake_count_locked(freed)
        if _faults.ARMED:
            _faults.point("finish.delivered")
        if delivered:
            # The client drains its whole ring when woken: a post it has not consumed yet
            # covers this slot too (pushed before this check).
            _post_if_idle(self.channel_sem(channel))
        self._post_free(wake)
        return delivered, nxt

    def _deliver_locked(self, slot: int) -> int:
        v = self.v
        slots, chans, r = v.slots_mv, v.channels_mv, slot * _COLS
        channel = slots[r + _CHAN]
        c = channel * _CCOLS
        tail = chans[c + _C_TAIL]
        n = v.layout.slots
        v.rings_mv[channel * n + tail % n] = slot
        slots[r + _ST] = _DONE
        if _faults.ARMED:
            _faults.point("deliver.marked")
        chans[c + _C_TAIL] = tail + 1
        return channel

    def _pop_queue_locked(self) -> int:
        """The slot at the queue's head, popped (the queue must not be empty)."""
        v = self.v
        w = v.words_mv
        head = w[_W_QH]
        w[_W_QH] = head + 1
        return v.queue_mv[head % v.layout.slots]

    def _answer_error_locked(self, slot: int, payload: bytes, end: int) -> int:
        """Answer the slot's client with the error ``payload`` instead of a worker's response,
        counting the job as ended in column ``end``; returns the channel to post."""
        v = self.v
        slots, r = v.slots_mv, slot * _COLS
        v.response_area(slot)[:len(payload)] = payload
        slots[r + _RESP] = len(payload)
        slots[r + _SPOOL] = NO_SPILL
        slots[r + _STATUS] = _ERROR
        channel = self._deliver_locked(slot)
        slots[r + end] += 1
        return channel

    def _leave_worker_locked(self, slot: int) -> int:
        """The slot's worker is gone (dead, or killed for its deadline): take its staged spill
        for the supervisor to free, and end the slot if its client left too (1 if freed)."""
        slots, r = self.v.slots_mv, slot * _COLS
        self._take_spill_locked(slot, self.stranded_spills)
        slots[r + _WPID] = slots[r + _WSTART] = slots[r + _DEADLINE] = 0
        if slots[r + _ST] == _ORPHANED:  # nobody waits for it: it ends here
            self._free_locked(slot)
            slots[r + _END_CANC] += 1
            return 1
        return 0

    def _enqueue(self, slot: int) -> None:
        w = self.v.words_mv
        tail = w[_W_QT]
        self.v.queue_mv[tail % self.v.layout.slots] = slot
        w[_W_QT] = tail + 1

    # ----------------------------------------------------------------- supervision (coordinator)

    def requeue_worker(self, pid: int, fail: Callable[[int, int], bytes], max_attempts: int = 2, *,
                       start: int = 0) -> tuple[int, int]:
        """Requeue the requests dead worker ``pid`` held; fail those that already killed
        ``max_attempts`` workers with the response ``fail(slot, attempts)``. Returns (requeued, failed).

        ``start``: the worker's start token; when given, a slot is the dead worker's only if
        both match, so a reused pid's requests (another process of the same pid) stay put."""
        v = self.v
        requeued, failed, channels = 0, 0, []
        with self._supervising():
            wake = 0
            mine = v.slots[:, SC.WORKER_PID] == pid
            if start:
                mine &= v.slots[:, SC.WORKER_START] == start
            for slot in np.flatnonzero(mine).tolist():
                row = v.slots[slot]
                if int(row[SC.STATE]) not in _TAKEN:
                    continue
                row[SC.ATTEMPTS] += 1
                if self._leave_worker_locked(slot):
                    wake += 1
                elif int(row[SC.ATTEMPTS]) >= max_attempts:
                    channels.append(self._answer_error_locked(slot, fail(slot, int(row[SC.ATTEMPTS])), _END_ERR))
                    failed += 1
                else:
                    row[SC.STATE] = SlotState.SUBMITTED
                    self._enqueue(slot)
                    requeued += 1
            v.words[JW.REQUEUED] += requeued
            wake = self._wake_count_locked(wake)
        self._post_free(wake)
        for ch in channels:
            self.channel_sem(ch).release()
        for _ in range(requeued):
            self.pending_sem.release()
        return requeued, failed

    def expired(self, now_ns: int | None = None) -> list[tuple[int, int, int]]:
        """(slot, seq, worker pid) of running jobs past their deadline (SC.DEADLINE_NS); read
        without the lock: a candidate list that :meth:`expire` confirms under it."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        cols = self.v.slots[:, [SC.STATE, SC.SEQ, SC.WORKER_PID, SC.DEADLINE_NS]].copy()
        late = np.isin(cols[:, 0], _TAKEN) & (cols[:, 3] > 0) & (cols[:, 3] <= now_ns)
        return [(int(s), int(cols[s, 1]), int(cols[s, 2])) for s in np.flatnonzero(late)]

    def expire(self, slot: int, seq: int, worker_pid: int, payload: bytes, kill: Callable[[], None]) -> bool:
        """End a job that ran past its deadline: ``kill()`` its worker and answer ``payload``
        (an encoded JobTimeout), both under the lock, so the worker can neither finish this job
        nor take another in between. False (nothing done) if the slot moved on meanwhile.

        The slot leaves the worker (WORKER_PID 0), so :meth:`requeue_worker` does not retry it
        when the supervisor sees the worker dead; an orphaned job (its client left) is freed.
        """
        v = self.v
        channel = None
        with self._supervising():
            row = v.slots[slot]
            state = int(row[SC.STATE])
            if (int(row[SC.SEQ]) != seq or state not in _TAKEN or int(row[SC.WORKER_PID]) != worker_pid
                    or int(row[SC.DEADLINE_NS]) <= 0):
                return False
            kill()
            # A staged spill, maybe already handed over, goes to the supervisor to free.
            if self._leave_worker_locked(slot):
                wake = self._wake_count_locked(1)
            else:
                channel = self._answer_error_locked(slot, payload, _END_ERR)
                wake = 0
        self._post_free(wake)
        if channel is not None:
            self.channel_sem(channel).release()
        return True

    def sweep_dead_clients(self) -> int:
        """Settle the slots and free the channels of clients that died; returns slots affected.

        Liveness is read outside the lock (a /proc read per client is ~10 µs, too long to hold
        up the job path); only the settling of the dead happens under it.
        """
        v = self.v
        slots = v.slots[:, [SC.STATE, SC.CLIENT_PID, SC.CLIENT_START]].copy()
        idents = {(int(p), int(t)) for state, p, t in slots.tolist() if state != SlotState.FREE}
        idents |= {(int(p), int(t)) for p, t in v.channels[:, [CC.PID, CC.START]].tolist() if p}
        dead = {ident for ident in idents if not is_alive(*ident)}
        if not dead:
            return 0
        spills: list = []
        with self._supervising():
            theirs = [slot for slot in range(v.layout.slots) if self.client_of(slot) in dead]
            freed, affected = self._abandon_all_locked(theirs, spills)
            for k in range(len(v.channels)):
                if (int(v.channels[k, CC.PID]), int(v.channels[k, CC.START])) in dead:
                    self._clear_channel_locked(k)
            wake = self._wake_count_locked(freed)
        self._post_free(wake)
        self.stranded_spills.extend(spills)
        if affected:
            logger.info("jobs of dead clients cleaned up: {} slots", affected)
        return affected

    def heal(self) -> list[str]:
        """Restore the board's invariants from the slots' states; the lock must be held.

        Runs when a holder died inside the lock, and once per supervision round. Returns what it
        repaired (empty when everything held). Rings are read before states: a client marks a
        slot DELIVERED before moving its head past it, so a DONE slot outside [head, tail) is
        truly missing, never one being consumed right now.
        """
        v = self.v
        w = v.words
        n = v.layout.slots
        channels = v.channels.copy()
        states = v.slots[:, SC.STATE].copy()
        repairs: list[str] = []

        free = np.flatnonzero(states == SlotState.FREE)
        top = int(w[JW.FREE_TOP])
        if not 0 <= top <= n or not np.array_equal(np.sort(v.free[:top]), free):
            v.free[:len(free)] = free[::-1]
            w[JW.FREE_TOP] = len(free)
            repairs.append(f"free stack {top} -> {len(free)} slots")

        queued = np.flatnonzero(np.isin(states, _QUEUED))
        head, tail = int(w[JW.Q_HEAD]), int(w[JW.Q_TAIL])
        entries = [int(v.queue[i % n]) for i in range(head, tail)] if 0 <= tail - head <= n else None
        if entries is None or sorted(entries) != queued.tolist():
            order = sorted(queued.tolist(), key=lambda s: int(v.slots[s, SC.SUBMITTED_NS]))
            for i, slot in enumerate(order):
                v.queue[(head + i) % n] = slot
            w[JW.Q_TAIL] = head + len(order)
            repairs.append(f"queue {tail - head} -> {len(order)} entries")

        for slot in np.flatnonzero(states == SlotState.DONE):
            slot = int(slot)
            row = v.slots[slot]
            k = int(row[SC.CHANNEL])
            ch = channels[k]
            if not (ch[CC.PID] and ch[CC.PID] == row[SC.CLIENT_PID] and ch[CC.START] == row[SC.CLIENT_START]):
                continue  # its client is gone: the dead-client sweep frees it
            ring = v.rings[k]
            if slot not in {int(ring[i % n]) for i in range(int(ch[CC.HEAD]), int(ch[CC.TAIL]))}:
                t = int(v.channels[k, CC.TAIL])
                ring[t % n] = slot
                v.channels[k, CC.TAIL] = t + 1
                repairs.append(f"slot {slot} pushed to ring {k}")

        # Every submission into a slot (SEQ of them) has ended once, except the one in flight.
        cols = v.slots
        in_flight = np.isin(states, (SlotState.SUBMITTED, SlotState.RUNNING, SlotState.ORPHANED))
        gap = cols[:, SC.SEQ] - in_flight - cols[:, SC.END_OK] - cols[:, SC.END_ERROR] - cols[:, SC.END_CANCELLED]
        for slot in np.flatnonzero(gap > 0).tolist():
            if states[slot] in (SlotState.DONE, SlotState.DELIVERED):
                col = SC.END_OK if int(cols[slot, SC.STATUS]) == Status.OK else SC.END_ERROR
            else:
                col = SC.END_CANCELLED
            cols[slot, col] += int(gap[slot])
            repairs.append(f"slot {slot}: {int(gap[slot])} ended job(s) counted")

        waiters = int(v.channels[:, CC.WAITING].sum())
        if int(w[JW.FREE_WAITERS]) != waiters:
            repairs.append(f"free waiters {int(w[JW.FREE_WAITERS])} -> {waiters}")
            w[JW.FREE_WAITERS] = waiters
        if repairs:
            w[JW.REPAIRS] += len(repairs)
            logger.warning("job board of {!r} repaired: {}", self.name, "; ".join(repairs))
        return repairs

    def supervise(self) -> list[str]:
        """One supervision round (coordinator): heal, then re-send any wake-up a death swallowed."""
        v = self.v
        with self._supervising():
            repairs = self.heal()
            w = v.words
            queued = int(w[JW.Q_TAIL] - w[JW.Q_HEAD])
            free, waiters = int(w[JW.FREE_TOP]), int(w[JW.FREE_WAITERS])
            rings = [k for k in np.flatnonzero(v.channels[:, CC.PID] != 0).tolist()
                     if v.channels[k, CC.HEAD] != v.channels[k, CC.TAIL]]
        # Posting only idle semaphores: a sleeper that is merely slow must not collect a pile
        # of posts, and one post is enough for a worker (it drains the queue once woken).
        if queued:
            _post_if_idle(self.pending_sem)
        if free and waiters:
            _post_if_idle(self.free_sem, min(free, waiters))
        for k in rings:
            try:
                _post_if_idle(self.channel_sem(k))
            except posix_ipc.ExistentialError:
                logger.debug("channel {} semaphore gone", k)
        return repairs

    @contextlib.contextmanager
    def _supervising(self):
        """The lock for a supervision step: a stopped holder must not freeze the coordinator's
        other duties (reclamation, worker replacement), so the step raises LockTimeout after
        SUPERVISE_WAIT and the supervisor retries it next round."""
        self.lock.acquire(SUPERVISE_WAIT)
        try:
            yield
        finally:
            self.lock.release()

    def fail_outstanding(self, make_error: Callable[[int], bytes]) -> int:
        """At stop: answer every queued request with ``make_error(slot)`` instead of running it.

        Withdrawn (CANCELLED) requests still queued are freed, and as many waiting submitters
        woken, so they hear of the stop now rather than after their slice. Returns how many
        requests were answered."""
        v = self.v
        channels = []
        freed = 0
        with self.lock:
            w = v.words_mv
            while w[_W_QH] != w[_W_QT]:
                slot = self._pop_queue_locked()
                state = v.slots_mv[slot * _COLS + _ST]
                if state == _CANCELLED:
                    self._free_locked(slot)
                    freed += 1
                elif state == _SUBMITTED:
                    channels.append(self._answer_error_locked(slot, make_error(slot), _END_CANC))
            # A submitter waiting for a slot learns of the stop now, not after its slice.
            wake = self._wake_count_locked(freed)
        self._post_free(wake)
        for ch in channels:
            self.channel_sem(ch).release()
        return len(channels)

    def note_worker_started(self) -> None:
        """Worker: count itself as attached and serving (WorkerPool.start waits for the count)."""
        with self.lock:
            self.v.words_mv[JW.WORKERS_STARTED] += 1

    def workers_started(self) -> int:
        """Workers that ever reported serving (:meth:`note_worker_started`)."""
        return self.v.words_mv[JW.WORKERS_STARTED]

    def note_worker_death(self) -> None:
        """Count a worker death (a statistic only: best effort against a wedged lock)."""
        try:
            self.lock.acquire(SUPERVISE_WAIT)
        except TimeoutError:
            return
        try:
            self.v.words[JW.WORKER_DEATHS] += 1
        finally:
            self.lock.release()

    def stop_accepting(self) -> None:
        """Refuse new submissions from now on (AttachError); queued and running jobs go on."""
        self.v.words_mv[_W_STATE] = BoardState.STOPPING

    def counts(self) -> dict[str, int]:
        v = self.v
        w = v.words
        states = v.slots[:, SC.STATE]
        return {
            "slots": v.layout.slots, "free": int(w[JW.FREE_TOP]),
            "queued": int(w[JW.Q_TAIL] - w[JW.Q_HEAD]),
            "running": int(np.count_nonzero(states == SlotState.RUNNING)),
            "submitted": int(v.slots[:, SC.SEQ].sum()), "completed": int(v.slots[:, SC.END_OK].sum()),
            "failed": int(v.slots[:, SC.END_ERROR].sum()), "requeued": int(w[JW.REQUEUED]),
            "cancelled": int(v.slots[:, SC.END_CANCELLED].sum()), "worker_deaths": int(w[JW.WORKER_DEATHS]),
            "clients": int(np.count_nonzero(v.channels[:, CC.PID])),
            "repairs": int(w[JW.REPAIRS]), "lock_recoveries": int(w[JW.LOCK_RECOVERIES]),
        }

    def summary(self) -> dict:
        """Jobs and workers as this board knows them, for a process that only looks (``shmpool stats``).

        Read without the lock, like ``latency_histogram``: a snapshot for people, not for decisions.
        ``workers.running`` is workers started minus workers died (each death is followed by a
        restart, which counts as a start)."""
        v = self.v
        w = v.words
        busy = v.slots[v.slots[:, SC.STATE] == SlotState.RUNNING, SC.WORKER_PID]
        started, deaths = int(w[JW.WORKERS_STARTED]), int(w[JW.WORKER_DEATHS])
        return {"accepting": int(w[JW.STATE]) == 1, "jobs": self.counts(),
                "workers": {"running": max(0, started - deaths), "started": started, "deaths": deaths,
                            "busy_pids": sorted({int(p) for p in busy if p})}}

    def latency_histogram(self) -> dict:
        """Job latency (submitted -> response stored): bucket upper bounds in seconds with
        cumulative counts (Prometheus style, +Inf last), total count and sum in seconds."""
        # One copy of the words, without the lock: a scrape must not contend with workers. A
        # worker between its three stores can leave the sum one job behind the buckets; the
        # next read is whole again.
        w = self.v.words[JW.LATENCY_COUNT:JW.LATENCY_BUCKET0 + len(LATENCY_BOUNDS_NS) + 1].tolist()
        base = JW.LATENCY_COUNT
        count, sum_ns, counts = w[0], w[JW.LATENCY_SUM_NS - base], w[JW.LATENCY_BUCKET0 - base:]
        cumulative, running = [], 0
        for c in counts:
            running += c
            cumulative.append(running)
        bounds = [b / 1e9 for b in LATENCY_BOUNDS_NS] + [float("inf")]
        return {"buckets": list(zip(bounds, cumulative)), "count": count, "sum_seconds": sum_ns / 1e9}

    # ----------------------------------------------------------------- lifetime

    def unlink(self) -> None:
        """Remove the board's segment and every semaphore by name (owner only; idempotent).

        By name rather than by listing /dev/shm, because macOS has no listable namespace."""
        channels = int(self.v.words[JW.CHANNELS])
        names = [semaphore_name(self.name, kind) for kind in ("jobs-lock", "jobs-free", "jobs-pending")]
        names += [semaphore_name(self.name, f"ch{k}") for k in range(channels)]
        for sem in names:
            try:
                posix_ipc.unlink_semaphore(sem)
            except posix_ipc.ExistentialError:
                logger.debug("semaphore {} was already unlinked", sem)
        self._seg.unlink()

    def close(self) -> None:
        self.lock.close()
        self.v.release()
        self._seg.close()
        for sem in [*self._sems.values(), *self._channel_sems.values()]:
            try:
                sem.close()
            except posix_ipc.ExistentialError:
                logger.debug("semaphore {} already closed", sem.name)
        self._channel_sems = {}
