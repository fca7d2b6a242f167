"""The job board: request/response slots in shared memory, handed around with semaphores.

Why shared memory and semaphores (and not POSIX message queues): message queues do not exist on
macOS, cap message sizes at a few KiB by default, and measured 39 µs p99 per hop here against 25
µs for a semaphore; a slot also lets a response point into shared memory instead of carrying
bytes. The flow, with the board's lock (a crash-safe SharedLock) held only for a few stores:

    client:  acquire `free` (back-pressure, with timeout) -> lock: pop a free slot, write the
             request, push the slot on the queue -> post `pending`
    worker:  wait `pending` -> lock: pop the queue, mark RUNNING -> run the job -> write the
             response -> lock: mark DONE, push the slot on its client's ring -> post `ch<k>`
    client:  its completion thread waits on `ch<k>`, drains its ring, decodes, frees the slot
             (lock: push it on the free stack) -> post `free`

The supervisor (coordinator) requeues slots held by dead workers and frees slots of dead clients.
"""

from __future__ import annotations

import bisect
import time

import numpy as np
import posix_ipc
from loguru import logger

from ._proc import is_alive, my_identity
from .errors import AttachError, RequestTooLarge
from .jobs_layout import (CC, JOBS_MAGIC, JW, LATENCY_BOUNDS_NS, SC, JobsLayout, JobsView, SlotState, Status)
from .lock import SharedLock
from .names import runtime_dir, segment_name, semaphore_name
from .segments import Segment
from .trust import open_semaphore

__all__ = ["JobBoard"]

JOBS = "jobs"


def _sem(name: str, kind: str, *, create: bool, initial: int = 0) -> posix_ipc.Semaphore:
    if not create:  # an existing semaphore is used only once proven ours (owner, mode)
        return open_semaphore(semaphore_name(name, kind), instance=name)
    return posix_ipc.Semaphore(semaphore_name(name, kind), posix_ipc.O_CREX, mode=0o600, initial_value=initial)


def _spill_of(row) -> tuple[int, int, int, int, int]:
    return (int(row[SC.SPILL_POOL]), int(row[SC.SPILL_FIRST]), int(row[SC.RESP_LEN]),
            int(row[SC.SPILL_RECORD]), int(row[SC.SPILL_SERIAL]))


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
        self.stranded_spills: list[tuple[int, int, int, int, int]] = []
        self.lock = SharedLock(sems["lock"], view.words, str(runtime_dir() / f"{name}.jobs-recovery.lock"),
                               f"{name} jobs", on_recover=lambda _pid: self._rebuild())

    # ----------------------------------------------------------------- creation / attach

    @classmethod
    def create(cls, name: str, *, slots: int = 256, channels: int = 64, payload: int = 64 * 1024) -> "JobBoard":
        lay = JobsLayout.compute(slots, channels, payload)
        made: list = []
        try:
            sems = {"lock": _sem(name, "jobs-lock", create=True, initial=1),
                    "free": _sem(name, "jobs-free", create=True, initial=slots),
                    "pending": _sem(name, "jobs-pending", create=True)}
            made.extend(sems.values())
            for k in range(channels):
                made.append(_sem(name, f"ch{k}", create=True))
            seg = Segment.create(segment_name(name, JOBS), lay.size)
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
        view.slots[:, SC.SPILL_POOL] = -1
        w[JW.STATE] = 1
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

    def channel_sem(self, channel: int) -> posix_ipc.Semaphore:
        sem = self._channel_sems.get(channel)
        if sem is None:
            sem = self._channel_sems[channel] = _sem(self.name, f"ch{channel}", create=False)
        return sem

    # ----------------------------------------------------------------- clients

    def claim_channel(self) -> int:
        pid, start = my_identity()
        v = self.v
        with self.lock:
            rows = v.channels
            for k in range(len(rows)):
                owner = int(rows[k, CC.PID])
                if owner == 0 or not is_alive(owner, int(rows[k, CC.START])):
                    rows[k, CC.HEAD] = rows[k, CC.TAIL] = 0
                    rows[k, CC.START] = start
                    rows[k, CC.PID] = pid
                    break
            else:
                raise AttachError(name=self.name, reason=f"all {len(rows)} client channels are in use")
        sem = self.channel_sem(k)
        while True:  # a previous owner's unconsumed posts must not wake us for nothing
            try:
                sem.acquire(0)
            except posix_ipc.BusyError:
                break
        return k

    def release_channel(self, channel: int) -> list[tuple[int, int, int, int, int]]:
        """Give the channel back, settling every slot still addressed to it: queued requests are
        cancelled, running ones orphaned (freed when their worker finishes), finished ones freed.
        Returns the spilled results of the finished ones: the caller owns and frees them."""
        v = self.v
        spills, freed = [], 0
        with self.lock:
            busy = np.flatnonzero((v.slots[:, SC.STATE] != SlotState.FREE) & (v.slots[:, SC.CHANNEL] == channel))
            for slot in busy:
                row = v.slots[int(slot)]
                state = int(row[SC.STATE])
                if state == SlotState.SUBMITTED:
                    row[SC.STATE] = SlotState.CANCELLED
                elif state == SlotState.RUNNING:
                    row[SC.STATE] = SlotState.ORPHANED
                elif state == SlotState.DONE:
                    if int(row[SC.SPILL_POOL]) >= 0:
                        spills.append(_spill_of(row))
                    self._free_locked(int(slot))
                    freed += 1
            v.channels[channel, :] = 0
        for _ in range(freed):
            self.free_sem.release()
        return spills

    def submit(self, channel: int, request: bytes | memoryview, *, timeout: float | None) -> tuple[int, int]:
        """Put a request in a free slot and queue it; returns (slot, seq). Blocks for a free slot."""
        v = self.v
        if len(request) > v.layout.payload:
            raise RequestTooLarge(nbytes=len(request), capacity=v.layout.payload)
        if int(v.words[JW.STATE]) != 1:
            raise AttachError(name=self.name, reason="the coordinator is stopping; no new jobs are accepted")
        self.free_sem.acquire(timeout)  # BusyError on timeout: the caller turns it into TimeoutError
        pid, start = my_identity()
        with self.lock:
            w = v.words
            top = int(w[JW.FREE_TOP]) - 1
            slot = int(v.free[top])
            w[JW.FREE_TOP] = top
            row = v.slots[slot]
            seq = int(row[SC.SEQ]) + 1
            row[SC.SEQ] = seq
            row[SC.CLIENT_PID], row[SC.CLIENT_START], row[SC.CHANNEL] = pid, start, channel
            row[SC.WORKER_PID] = row[SC.WORKER_START] = row[SC.ATTEMPTS] = 0
            row[SC.REQ_LEN], row[SC.RESP_LEN], row[SC.SPILL_POOL] = len(request), 0, -1
            row[SC.SUBMITTED_NS] = time.monotonic_ns()
            v.request_area(slot)[:len(request)] = request
            row[SC.STATE] = SlotState.SUBMITTED
            self._enqueue(slot)
            w[JW.SUBMITTED] += 1
        self.pending_sem.release()
        return slot, seq

    def cancel(self, slot: int, seq: int) -> bool:
        """Withdraw a request that no worker has taken yet."""
        with self.lock:
            row = self.v.slots[slot]
            if int(row[SC.SEQ]) != seq or int(row[SC.STATE]) != SlotState.SUBMITTED:
                return False
            row[SC.STATE] = SlotState.CANCELLED
            self.v.words[JW.CANCELLED] += 1
            return True

    def completed(self, channel: int) -> list[int]:
        """Pop every slot index pushed to this client's ring (single consumer: no lock)."""
        v = self.v
        row = v.channels[channel]
        head, tail = int(row[CC.HEAD]), int(row[CC.TAIL])
        if head == tail:
            return []
        n = v.layout.slots
        ring = v.rings[channel]
        out = [int(ring[i % n]) for i in range(head, tail)]
        row[CC.HEAD] = tail
        return out

    def response(self, slot: int) -> tuple[int, int, memoryview | None, tuple | None]:
        """(seq, status, response bytes in the slot or None, spill location or None)."""
        row = self.v.slots[slot]
        n = int(row[SC.RESP_LEN])
        if int(row[SC.SPILL_POOL]) >= 0:
            spill = (int(row[SC.SPILL_POOL]), int(row[SC.SPILL_FIRST]), n,
                     int(row[SC.SPILL_RECORD]), int(row[SC.SPILL_SERIAL]))
            return int(row[SC.SEQ]), int(row[SC.STATUS]), None, spill
        return int(row[SC.SEQ]), int(row[SC.STATUS]), self.v.response_area(slot)[:n], None

    def release_slot(self, slot: int) -> None:
        """Return a DONE slot to the free stack (by the client that consumed it)."""
        self.release_slots((slot,))

    def release_slots(self, slots) -> None:
        """Return several DONE slots under one lock acquisition."""
        if not slots:
            return
        with self.lock:
            for slot in slots:
                self._free_locked(slot)
        for _ in slots:
            self.free_sem.release()

    def _free_locked(self, slot: int) -> None:
        v = self.v
        v.slots[slot, SC.STATE] = SlotState.FREE
        top = int(v.words[JW.FREE_TOP])
        v.free[top] = slot
        v.words[JW.FREE_TOP] = top + 1

    # ----------------------------------------------------------------- workers

    def take(self) -> tuple[int, int] | None:
        """Pop the next request for this worker: (slot, seq), or None if the queue is empty."""
        v = self.v
        w = v.words
        if int(w[JW.Q_HEAD]) == int(w[JW.Q_TAIL]):
            # Unlocked peek: a request queued right after it still posted pending_sem, so the
            # worker comes back for it; skipping the lock here halves lock traffic per job.
            return None
        pid, start = my_identity()
        freed = 0
        with self.lock:
            try:
                while int(w[JW.Q_HEAD]) != int(w[JW.Q_TAIL]):
                    head = int(w[JW.Q_HEAD])
                    slot = int(v.queue[head % v.layout.slots])
                    w[JW.Q_HEAD] = head + 1
                    row = v.slots[slot]
                    if int(row[SC.STATE]) == SlotState.CANCELLED:
                        self._free_locked(slot)
                        freed += 1
                        continue
                    row[SC.WORKER_PID], row[SC.WORKER_START] = pid, start
                    row[SC.SPILL_POOL] = -1
                    row[SC.STATE] = SlotState.RUNNING
                    return slot, int(row[SC.SEQ])
                return None
            finally:
                for _ in range(freed):
                    self.free_sem.release()

    def request(self, slot: int) -> memoryview:
        return self.v.request_area(slot)[:int(self.v.slots[slot, SC.REQ_LEN])]

    def stage_spill(self, slot: int, seq: int, spill: tuple[int, int, int, int, int]) -> bool:
        """Record where a large result lies *before* its ownership moves to the client, so that
        if this worker dies in between, :meth:`requeue_worker` finds the blocks and frees them."""
        with self.lock:
            row = self.v.slots[slot]
            if int(row[SC.SEQ]) != seq or int(row[SC.STATE]) not in (SlotState.RUNNING, SlotState.ORPHANED):
                return False
            row[SC.SPILL_POOL], row[SC.SPILL_FIRST], row[SC.RESP_LEN], row[SC.SPILL_RECORD], \
                row[SC.SPILL_SERIAL] = spill
            return True

    def finish(self, slot: int, seq: int, status: Status, response: bytes | None) -> bool:
        """Hand the slot and its response to the client. ``response`` None means the result was
        staged with :meth:`stage_spill`. False if nobody will read it (the job was taken away, or
        its client left): a staged spill is then the caller's to free."""
        v = self.v
        row = v.slots[slot]
        if response is not None:
            v.response_area(slot)[:len(response)] = response
            row[SC.RESP_LEN], row[SC.SPILL_POOL] = len(response), -1
        row[SC.STATUS] = status
        with self.lock:
            state = int(row[SC.STATE])
            if int(row[SC.SEQ]) != seq or state not in (SlotState.RUNNING, SlotState.ORPHANED):
                return False
            latency = time.monotonic_ns() - int(row[SC.SUBMITTED_NS])  # CLOCK_MONOTONIC: system-wide
            w = v.words
            w[JW.LATENCY_BUCKET0 + bisect.bisect_left(LATENCY_BOUNDS_NS, latency)] += 1
            w[JW.LATENCY_COUNT] += 1
            w[JW.LATENCY_SUM_NS] += latency
            delivered = state == SlotState.RUNNING
            channel = self._deliver_locked(slot) if delivered else None
            if not delivered:
                self._free_locked(slot)
            v.words[JW.COMPLETED] += 1
            if status != Status.OK:
                v.words[JW.FAILED] += 1
        (self.channel_sem(channel) if delivered else self.free_sem).release()
        return delivered

    def _deliver_locked(self, slot: int) -> int:
        v = self.v
        row = v.slots[slot]
        channel = int(row[SC.CHANNEL])
        ch = v.channels[channel]
        tail = int(ch[CC.TAIL])
        v.rings[channel, tail % v.layout.slots] = slot
        row[SC.STATE] = SlotState.DONE
        ch[CC.TAIL] = tail + 1
        return channel

    def _enqueue(self, slot: int) -> None:
        w = self.v.words
        tail = int(w[JW.Q_TAIL])
        self.v.queue[tail % self.v.layout.slots] = slot
        w[JW.Q_TAIL] = tail + 1

    # ----------------------------------------------------------------- supervision (coordinator)

    def requeue_worker(self, pid: int, fail: "callable[[int, int], bytes]", max_attempts: int = 2) -> tuple[int, int]:
        """Requeue the requests dead worker ``pid`` held; fail those that already killed
        ``max_attempts`` workers with the response ``fail(slot, attempts)``. Returns (requeued, failed)."""
        v = self.v
        requeued, failed, channels = 0, 0, []
        with self.lock:
            for slot in np.flatnonzero(v.slots[:, SC.WORKER_PID] == pid):
                slot = int(slot)
                row = v.slots[slot]
                state = int(row[SC.STATE])
                if state not in (SlotState.RUNNING, SlotState.ORPHANED):
                    continue
                if int(row[SC.SPILL_POOL]) >= 0:  # died between staging a large result and finishing
                    self.stranded_spills.append(_spill_of(row))
                    row[SC.SPILL_POOL] = -1
                row[SC.ATTEMPTS] += 1
                row[SC.WORKER_PID] = row[SC.WORKER_START] = 0
                if state == SlotState.ORPHANED:
                    self._free_locked(slot)
                    channels.append(None)
                elif int(row[SC.ATTEMPTS]) >= max_attempts:
                    payload = fail(slot, int(row[SC.ATTEMPTS]))
                    v.response_area(slot)[:len(payload)] = payload
                    row[SC.RESP_LEN], row[SC.SPILL_POOL], row[SC.STATUS] = len(payload), -1, Status.ERROR
                    channels.append(self._deliver_locked(slot))
                    v.words[JW.COMPLETED] += 1
                    v.words[JW.FAILED] += 1
                    failed += 1
                else:
                    row[SC.STATE] = SlotState.SUBMITTED
                    self._enqueue(slot)
                    requeued += 1
            v.words[JW.REQUEUED] += requeued
        for ch in channels:
            (self.free_sem if ch is None else self.channel_sem(ch)).release()
        for _ in range(requeued):
            self.pending_sem.release()
        return requeued, failed

    def sweep_dead_clients(self) -> int:
        """Free the slots and channels of clients that died; returns how many slots were affected."""
        v = self.v
        freed, affected = 0, 0
        with self.lock:
            verdict: dict[tuple[int, int], bool] = {}
            for slot in np.flatnonzero(v.slots[:, SC.STATE] != SlotState.FREE):
                slot = int(slot)
                row = v.slots[slot]
                owner = (int(row[SC.CLIENT_PID]), int(row[SC.CLIENT_START]))
                alive = verdict.get(owner)
                if alive is None:
                    alive = verdict[owner] = is_alive(*owner)
                if alive:
                    continue
                state = int(row[SC.STATE])
                affected += 1
                if state == SlotState.SUBMITTED:
                    row[SC.STATE] = SlotState.CANCELLED
                elif state == SlotState.RUNNING:
                    row[SC.STATE] = SlotState.ORPHANED
                elif state == SlotState.DONE:
                    self._free_locked(slot)
                    freed += 1
            for k in range(len(v.channels)):
                pid = int(v.channels[k, CC.PID])
                if pid and not is_alive(pid, int(v.channels[k, CC.START])):
                    v.channels[k, :] = 0
        for _ in range(freed):
            self.free_sem.release()
        if affected:
            logger.info("jobs of dead clients cleaned up: {} slots", affected)
        return affected

    def fail_outstanding(self, make_error: "callable[[int], bytes]") -> int:
        """At stop: answer every queued request with an error instead of running it."""
        v = self.v
        channels = []
        with self.lock:
            w = v.words
            while int(w[JW.Q_HEAD]) != int(w[JW.Q_TAIL]):
                head = int(w[JW.Q_HEAD])
                slot = int(v.queue[head % v.layout.slots])
                w[JW.Q_HEAD] = head + 1
                row = v.slots[slot]
                if int(row[SC.STATE]) != SlotState.SUBMITTED:
                    continue
                payload = make_error(slot)
                v.response_area(slot)[:len(payload)] = payload
                row[SC.RESP_LEN], row[SC.SPILL_POOL], row[SC.STATUS] = len(payload), -1, Status.ERROR
                channels.append(self._deliver_locked(slot))
                w[JW.CANCELLED] += 1
        for ch in channels:
            self.channel_sem(ch).release()
        return len(channels)

    def stop_accepting(self) -> None:
        self.v.words[JW.STATE] = 2

    def counts(self) -> dict[str, int]:
        v = self.v
        w = v.words
        states = v.slots[:, SC.STATE]
        return {
            "slots": v.layout.slots, "free": int(w[JW.FREE_TOP]),
            "queued": int(w[JW.Q_TAIL] - w[JW.Q_HEAD]),
            "running": int(np.count_nonzero(states == SlotState.RUNNING)),
            "submitted": int(w[JW.SUBMITTED]), "completed": int(w[JW.COMPLETED]),
            "failed": int(w[JW.FAILED]), "requeued": int(w[JW.REQUEUED]),
            "cancelled": int(w[JW.CANCELLED]), "worker_deaths": int(w[JW.WORKER_DEATHS]),
            "clients": int(np.count_nonzero(v.channels[:, CC.PID])),
        }

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

    def _rebuild(self) -> None:
        """After taking the lock from a dead holder: rebuild free stack and queue from slot states."""
        v = self.v
        states = v.slots[:, SC.STATE]
        free = [int(s) for s in np.flatnonzero(states == SlotState.FREE)]
        v.free[:len(free)] = free[::-1]
        v.words[JW.FREE_TOP] = len(free)
        queued = sorted((int(s) for s in np.flatnonzero((states == SlotState.SUBMITTED) | (states == SlotState.CANCELLED))),
                        key=lambda s: int(v.slots[s, SC.SUBMITTED_NS]))
        head = int(v.words[JW.Q_HEAD])
        for i, slot in enumerate(queued):
            v.queue[(head + i) % v.layout.slots] = slot
        v.words[JW.Q_TAIL] = head + len(queued)
        logger.warning("job board of {!r} rebuilt after a crash inside its lock: {} free, {} queued",
                       self.name, len(free), len(queued))

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
        self.v.release()
        self._seg.close()
        for sem in [*self._sems.values(), *self._channel_sems.values()]:
            try:
                sem.close()
            except posix_ipc.ExistentialError:
                logger.debug("semaphore {} already closed", sem.name)
        self._channel_sems = {}
