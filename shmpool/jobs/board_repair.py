"""The job board's repair and supervision: what runs when something died, not once per job.

A death at any instruction of the job path (shmpool/_core/_board.pyx) leaves slot states that
are right and derived structures (free stack, queue, rings, end counts) that may be behind by one
step. :meth:`BoardRepair.heal` rebuilds those from the states; it runs in the next locker when a
holder died inside the lock (the robust mutex's EOWNERDEAD), and once per supervision round.
The coordinator also settles the slots of dead workers (requeue or fail) and dead clients
(cancel, orphan or free), answers what is queued when it stops, and kills jobs past their
deadline. Slot states change only as shmpool/jobs/slot_states.py allows.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from ..substrate._log import logger

from ..substrate._proc import is_alive
from .jobs_layout import CC, JW, SC, SLOT_COLS, SlotState, Status
from .arg_spill import ArgumentsLeft, ArgumentsRef, answer_arguments, read_arguments
from .spill import SpillRef, read_spill, write_spill

if TYPE_CHECKING:
    from .._core import BoardCore, RobustMutex, SharedWords
    from .jobs_layout import JobsView

__all__ = ["BoardRepair", "SUPERVISE_WAIT"]

SUPERVISE_WAIT = 0.5  # seconds a supervision step waits for the lock before trying next round
_COLS = SLOT_COLS
_ST, _WPID, _WSTART, _DEADLINE = int(SC.STATE), int(SC.WORKER_PID), int(SC.WORKER_START), int(SC.DEADLINE_NS)
_KEPT = int(SC.ARG_KEPT)
_END_ERR, _END_CANC = int(SC.END_ERROR), int(SC.END_CANCELLED)
_FREE, _SUBMITTED, _CANCELLED, _ORPHANED = (int(SlotState.FREE), int(SlotState.SUBMITTED),
                                             int(SlotState.CANCELLED), int(SlotState.ORPHANED))
_W_QH, _W_QT = int(JW.Q_HEAD), int(JW.Q_TAIL)
_QUEUED = (SlotState.SUBMITTED, SlotState.CANCELLED)
_TAKEN = (SlotState.RUNNING, SlotState.ORPHANED)


class BoardRepair:
    """JobBoard's repair and supervision steps (a mixin: JobBoard provides these attributes)."""

    name: str
    owner: bool
    v: "JobsView"
    core: "BoardCore"
    lock: "RobustMutex"
    _words: "SharedWords"
    stranded_spills: list[SpillRef]
    orphaned_args: list[ArgumentsRef]
    stranded_args: list[ArgumentsRef]

    # ----------------------------------------------------------------- settling slots

    def _settle_channel_locked(self, channel: int, spills: list[SpillRef],
                               left: ArgumentsLeft | None = None) -> int:
        """End every slot addressed to ``channel``; returns how many went back to the free stack."""
        v = self.v
        owner = v.channels[channel]
        mine = ((v.slots[:, SC.CHANNEL] == channel) & (v.slots[:, SC.CLIENT_PID] == owner[CC.PID])
                & (v.slots[:, SC.CLIENT_START] == owner[CC.START]))
        return self._abandon_all_locked(np.flatnonzero(mine).tolist(), spills, left)[0]

    def _abandon_all_locked(self, slots: list[int], spills: list[SpillRef],
                            left: ArgumentsLeft | None = None) -> tuple[int, int]:
        """Settle every slot of ``slots`` whose client is gone: (freed, affected). One already
        settled (CANCELLED, ORPHANED: a worker frees it) or FREE is left alone. ``left``
        receives the spilled arguments of the jobs settled here (arg_spill.py)."""
        freed = affected = 0
        states = self.v.slots_mv
        for slot in slots:
            if states[slot * _COLS + _ST] in (_FREE, _CANCELLED, _ORPHANED):
                continue
            affected += 1
            freed += self._abandon_locked(slot, spills, left)
        return freed, affected

    def _clear_channel_locked(self, channel: int) -> None:
        """Free a channel row; its counted sleepers stop counting (they left with it)."""
        waiting = int(self.v.channels[channel, CC.WAITING])
        if waiting:
            self._words.fetch_add(int(JW.FREE_WAITERS), -waiting)
        self.v.channels[channel, :] = 0

    def _abandon_locked(self, slot: int, spills: list[SpillRef], left: ArgumentsLeft | None = None) -> int:
        """Settle one slot whose client is gone: 1 if it went back to the free stack."""
        row = self.v.slots[slot]
        state = int(row[SC.STATE])
        arguments = None
        if left is not None:  # a finished job's worker may have kept them: then it frees them
            finished = state in (SlotState.DONE, SlotState.DELIVERED)
            arguments = (answer_arguments if finished else read_arguments)(self.v.slots_mv, slot)
        if arguments is not None and left is not None:
            # A running job's worker reads them still (adopted by the coordinator); any other
            # job is over or will never run (a CANCELLED slot is freed unread): free them.
            (left.orphaned if state == SlotState.RUNNING else left.ended).append(arguments)
        if state == SlotState.SUBMITTED:
            row[SC.STATE] = SlotState.CANCELLED  # the worker that pops it frees it
            row[SC.END_CANCELLED] += 1
        elif state == SlotState.RUNNING:
            row[SC.STATE] = SlotState.ORPHANED
        elif state in (SlotState.DONE, SlotState.DELIVERED):
            self._take_spill_locked(slot, spills)
            self.core.free_locked(slot)
            return 1
        return 0

    def _take_spill_locked(self, slot: int, into: list[SpillRef]) -> None:
        """Move the slot's spill (if any) into ``into``: whoever drains that list frees it."""
        spill = read_spill(self.v.slots_mv, slot)
        if spill is not None:
            into.append(spill)
            write_spill(self.v.slots_mv, slot, None)

    def _answer_error_locked(self, slot: int, payload: bytes, end: int) -> int:
        """Answer the slot's client with the error ``payload`` instead of a worker's response,
        counting the job as ended in column ``end``; returns the channel to wake."""
        v = self.v
        slots, r = v.slots_mv, slot * _COLS
        v.response_area(slot)[:len(payload)] = payload
        slots[r + SC.RESP_LEN] = len(payload)
        slots[r + SC.SPILL_POOL] = -1
        slots[r + SC.STATUS] = int(Status.ERROR)
        channel: int = self.core.deliver_locked(slot)
        slots[r + end] += 1
        return channel

    def _leave_worker_locked(self, slot: int) -> int:
        """The slot's worker is gone (dead, or killed for its deadline): take its staged spill
        for the supervisor to free, and end the slot if its client left too (1 if freed)."""
        slots, r = self.v.slots_mv, slot * _COLS
        self._take_spill_locked(slot, self.stranded_spills)
        # Its mark of kept arguments goes with it: their views died with it, so the requeued
        # run or the answer's reader deals with them as if it had never run.
        slots[r + _WPID] = slots[r + _WSTART] = slots[r + _DEADLINE] = slots[r + _KEPT] = 0
        if slots[r + _ST] == _ORPHANED:  # nobody waits for it: it ends here
            arguments = read_arguments(slots, slot)
            if arguments is not None:  # no worker will free them now: the supervisor does
                self.stranded_args.append(arguments)
            self.core.free_locked(slot)
            slots[r + _END_CANC] += 1
            return 1
        return 0

    # ----------------------------------------------------------------- supervision (coordinator)

    @contextlib.contextmanager
    def _supervising(self) -> Iterator[None]:
        """The lock for a supervision step: a stopped holder must not freeze the coordinator's
        other duties (reclamation, worker replacement), so the step raises LockTimeout after
        SUPERVISE_WAIT and the supervisor retries it next round."""
        self.lock.acquire(SUPERVISE_WAIT)
        try:
            yield
        finally:
            self.lock.release()

    def requeue_worker(self, pid: int, fail: Callable[[int, int], bytes], max_attempts: int = 2, *,
                       start: int = 0) -> tuple[int, int]:
        """Requeue the requests dead worker ``pid`` held; fail those that already killed
        ``max_attempts`` workers with the response ``fail(slot, attempts)``. Returns (requeued, failed).

        ``start``: the worker's start token; when given, a slot is the dead worker's only if
        both match, so a reused pid's requests (another process of the same pid) stay put."""
        v = self.v
        requeued, failed, freed, channels = 0, 0, 0, []
        with self._supervising():
            mine = v.slots[:, SC.WORKER_PID] == pid
            if start:
                mine &= v.slots[:, SC.WORKER_START] == start
            for slot in np.flatnonzero(mine).tolist():
                row = v.slots[slot]
                if int(row[SC.STATE]) not in _TAKEN:
                    continue
                row[SC.ATTEMPTS] += 1
                if self._leave_worker_locked(slot):
                    freed += 1
                elif int(row[SC.ATTEMPTS]) >= max_attempts:
                    channels.append(self._answer_error_locked(slot, fail(slot, int(row[SC.ATTEMPTS])), _END_ERR))
                    failed += 1
                else:
                    row[SC.STATE] = SlotState.SUBMITTED
                    self.core.enqueue_locked(slot)
                    requeued += 1
            v.words[JW.REQUEUED] += requeued
        self.core.wake_free(freed)
        for ch in channels:
            self.core.wake_ring(ch)
        for _ in range(requeued):
            self.core.wake_queue()
        return requeued, failed

    def expired(self, now_ns: int | None = None) -> list[tuple[int, int, int]]:
        """(slot, seq, worker pid) of running jobs past their deadline (SC.DEADLINE_NS); read
        without the lock: a candidate list that :meth:`expire` confirms under it."""
        from .._core import monotonic_ns
        now_ns = monotonic_ns() if now_ns is None else now_ns
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
        freed = 0
        with self._supervising():
            row = v.slots[slot]
            state = int(row[SC.STATE])
            if (int(row[SC.SEQ]) != seq or state not in _TAKEN or int(row[SC.WORKER_PID]) != worker_pid
                    or int(row[SC.DEADLINE_NS]) <= 0):
                return False
            kill()
            # A staged spill, maybe already handed over, goes to the supervisor to free.
            if self._leave_worker_locked(slot):
                freed = 1
            else:
                channel = self._answer_error_locked(slot, payload, _END_ERR)
        self.core.wake_free(freed)
        if channel is not None:
            self.core.wake_ring(channel)
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
        spills: list[SpillRef] = []
        left = ArgumentsLeft()
        with self._supervising():
            theirs = [slot for slot in range(v.layout.slots)
                      if (int(v.slots[slot, SC.CLIENT_PID]), int(v.slots[slot, SC.CLIENT_START])) in dead]
            freed, affected = self._abandon_all_locked(theirs, spills, left)
            for k in range(len(v.channels)):
                if (int(v.channels[k, CC.PID]), int(v.channels[k, CC.START])) in dead:
                    self._clear_channel_locked(k)
        self.core.wake_free(freed)
        self.stranded_spills.extend(spills)
        self.orphaned_args.extend(left.orphaned)
        self.stranded_args.extend(left.ended)
        if affected:
            logger.info("jobs of dead clients cleaned up: {} slots", affected)
        return affected

    def named_arguments(self) -> set[ArgumentsRef]:
        """The spilled arguments every slot in use names, read under the lock (SUPERVISE_WAIT:
        LockTimeout if a holder stops); for arg_spill.settle_lent_arguments."""
        v = self.v
        with self._supervising():
            cols = v.slots[:, [SC.STATE, SC.ARG_RECORD, SC.ARG_SERIAL]].copy()
        return {ArgumentsRef(int(record), int(serial)) for state, record, serial in cols.tolist()
                if state != _FREE and record >= 0}

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
            self._words.fetch_add(int(JW.FREE_SEQ), 1)  # a submitter about to sleep looks again
            repairs.append(f"free stack {top} -> {len(free)} slots")

        queued = np.flatnonzero(np.isin(states, _QUEUED))
        head, tail = int(w[JW.Q_HEAD]), int(w[JW.Q_TAIL])
        entries = [int(v.queue[i % n]) for i in range(head, tail)] if 0 <= tail - head <= n else None
        if entries is None or sorted(entries) != queued.tolist():
            order = sorted(queued.tolist(), key=lambda s: int(v.slots[s, SC.SUBMITTED_NS]))
            for i, slot in enumerate(order):
                v.queue[(head + i) % n] = slot
            self._words.store(_W_QT, head + len(order))
            repairs.append(f"queue {tail - head} -> {len(order)} entries")

        for slot in np.flatnonzero(states == SlotState.DONE).tolist():
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
        # FREE_WAITERS and the sleeper counts are not repaired here: sleepers change them outside
        # the lock, so a recount under it would race them. A dead sleeper leaves its count one
        # high (a needless FUTEX_WAKE per later wake-up, never a lost one); a dead client's
        # channel row subtracts its own when it is cleared.
        if repairs:
            w[JW.REPAIRS] += len(repairs)
            logger.warning("job board of {!r} repaired: {}", self.name, "; ".join(repairs))
        return repairs

    def supervise(self) -> list[str]:
        """One supervision round (coordinator): heal, then re-send any wake-up a death swallowed.

        A waker killed between changing a word and waking its sleepers leaves them asleep until
        their own slice ends; this wakes them now. Each wake calls the kernel only if a sleeper
        is counted, so a round costs nothing on an idle board."""
        v = self.v
        with self._supervising():
            repairs = self.heal()
            w = v.words
            queued = int(w[JW.Q_TAIL] - w[JW.Q_HEAD])
            free, waiters = int(w[JW.FREE_TOP]), int(w[JW.FREE_WAITERS])
            rings = [k for k in np.flatnonzero(v.channels[:, CC.PID] != 0).tolist()
                     if v.channels[k, CC.HEAD] != v.channels[k, CC.TAIL]]
        if queued:
            self.core.wake_queue()
        if free and waiters:
            self.core.wake_free(min(free, waiters))
        for k in rings:
            self.core.wake_ring(k)
        return repairs

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
                slot: int = self.core.pop_queue_locked()
                state = v.slots_mv[slot * _COLS + _ST]
                if state == _CANCELLED:
                    self.core.free_locked(slot)
                    freed += 1
                elif state == _SUBMITTED:
                    channels.append(self._answer_error_locked(slot, make_error(slot), _END_CANC))
        # Every submitter waiting for a slot learns of the stop now, not after its slice.
        self.core.wake_free(0x7FFFFFFF)
        for ch in channels:
            self.core.wake_ring(ch)
        return len(channels)
