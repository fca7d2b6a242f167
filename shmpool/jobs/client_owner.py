"""The completion owner of a Client's shared channel: the one place its futures are settled.

Shaped after ``_ExecutorManagerThread`` in CPython's ``concurrent/futures/process.py``: the
Client (the Executor front) only submits and registers futures here; this owner's thread waits
on the channel, drains its ring, settles each future with :func:`~.client_link.settle`, frees the
slots, and at the end detaches: releases the channels and lets go of the board and reader. It
holds no reference to the Client, so a Client dropped without ``shutdown()`` is collected; its
finalizer tells the owner, which finishes the jobs still pending and detaches, as
ProcessPoolExecutor's manager thread does when its executor is collected.

States (:class:`Lifecycle`) and the flags beside them, all under ``_lock``:

    OPEN           submits accepted
    SHUTTING_DOWN  shutdown(): no new submits; detach once nothing is pending
    CLOSING        close(): detach at once, withdrawing what is queued, failing the rest
    CLOSED         detached: channels released; a late registration is failed at once

``dropped`` (the Client was collected: like SHUTTING_DOWN), ``broken`` (the coordinator died or
removed the board: every pending future fails with it at once, and the owner detaches when the
client is closed, shut down or dropped, so its reader stays usable until then) and
``submitting`` (submits past the state check that have not registered yet: the owner does not
detach under them).

One exception to "the owner's thread settles": an answer can arrive before its submit has
registered the future (the worker is faster than the submitting thread's next few
instructions). The owner parks such a slot in ``_early`` and the registering thread settles it
through the same :meth:`_settle_all`, the owner's code, in its own thread.
"""

from __future__ import annotations

import concurrent.futures
import enum
import threading
import time
from concurrent.futures import Future
from typing import Any

from ..substrate._log import logger

from ..errors import ClientClosed, ShmPoolError
from .client_direct import POLL, SPENT_IDLE, DirectPool
from .client_link import Link, Outcome, QuietFuture, settle
from ..substrate.timeouts import check_timeout

__all__ = ["CompletionOwner", "JobFuture", "Lifecycle"]

CANCEL_WAIT = 0.05  # seconds a detach gives the lock to withdraw each queued request
HELP_MIN_PENDING = 2  # futures pending on the channel before a waiting thread drains it itself
_PENDING = concurrent.futures._base.PENDING
_RUNNING = concurrent.futures._base.RUNNING
_FINISHED = concurrent.futures._base.FINISHED


class Lifecycle(enum.Enum):
    """A Client's states: only OPEN takes new jobs (ClientClosed otherwise)."""
    OPEN = "open"
    SHUTTING_DOWN = "shut down, waiting for its jobs"
    CLOSING = "closing"
    CLOSED = "closed"


# ClientClosed's reason per state: "is closed (it is closed)" said nothing twice.
_WHY_NOT_OPEN = {Lifecycle.SHUTTING_DOWN: "shutdown() was called; its jobs are finishing",
                 Lifecycle.CLOSING: "close() was called", Lifecycle.CLOSED: "shutdown() or close() was called"}


class JobFuture(QuietFuture):
    """A Future whose ``cancel()`` also withdraws the request while no worker has taken it, and
    whose ``running()`` is True while a worker runs it (read from the slot in shared memory).

    ``cancel()`` of a running job returns False and the job runs on, as in concurrent.futures;
    bound a job's run time with ``job_timeout`` instead. In a child forked after the submit the
    future is its parent's: ``result()`` and ``exception()`` raise ClientClosed there."""

    def __init__(self, owner: "CompletionOwner", slot: int, seq: int, job: str) -> None:
        super().__init__()
        self._owner, self._slot, self._seq, self.job = owner, slot, seq, job

    def cancel(self) -> bool:
        if self._owner.link.inherited:
            return False
        with self._condition:
            if self._state != _PENDING:
                return self.cancelled()
        if not self._owner.withdraw(self):
            return False
        # Withdrawn and out of the table: nobody else settles it. Notified at once, as an
        # executor does when it reaches a cancelled item, so wait() and as_completed() see it.
        if not super().cancel():
            return False
        self.set_running_or_notify_cancel()
        return True

    def running(self) -> bool:
        link = self._owner.link
        if link.inherited or self.done() or not link.hold():
            return False
        try:
            # The slot cannot move to another job while this future is pending: it is freed
            # only after its response was delivered here. So STATE alone speaks for our SEQ.
            return link.board.is_running(self._slot, self._seq)
        finally:
            link.drop()

    def result(self, timeout: float | None = None) -> Any:
        if self._state == _FINISHED and self._exception is None:  # QuietFuture's fast path, kept
            return self._result
        try:
            self._refuse_if_inherited()
            timeout = check_timeout(timeout)  # InvalidArgument for NaN; inf: no limit (not OverflowError)
            if timeout is None or timeout > 0:
                timeout = self._owner.help(self, timeout)
            return super().result(timeout)
        finally:
            # The job's error re-raised here keeps this frame in its traceback, and the frame
            # keeps the future holding the error: drop ``self`` so no cycle waits for a gc pass
            # (CPython's Future.result does the same).
            self = None  # type: ignore[assignment]  # noqa: PLW0642

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._refuse_if_inherited()
        timeout = check_timeout(timeout)
        if self._owner.in_owner_thread() and (timeout is None or timeout > 0):
            timeout = self._owner.help(self, timeout)  # a done-callback waiting: see help()
        return super().exception(timeout)

    def _refuse_if_inherited(self) -> None:
        # _state read without the condition: a lock copied into a forked child may be held for ever.
        if self._owner.link.inherited and self._state in (_PENDING, _RUNNING):
            self._owner.link.check_process()


class CompletionOwner:
    """The owner of one Client's shared channel and of every future submitted through it."""

    def __init__(self, link: Link, channel: int, direct: DirectPool) -> None:
        self.link = link
        self.channel = channel
        self.direct = direct
        self._lock = threading.Lock()
        self._table: dict[int, JobFuture] = {}  # slot -> the pending future answered there
        self._early: set[int] = set()  # answered slots whose submit has not registered yet
        self.lifecycle = Lifecycle.OPEN
        self.submitting = 0
        self.dropped = False
        self.close_requested = False
        self.broken: BaseException | None = None
        self._stop_requested = threading.Event()  # wakes a broken owner waiting to detach
        # Held by whoever pops the channel's ring (its one consumer): the owner's thread, or a
        # thread waiting in result() that drains it meanwhile (help). Only for the pop: what
        # was popped is decoded and settled after it is released.
        self._drain_lock = threading.Lock()
        # Threads reading popped answers (_settle_all), which the detach waits for before it
        # releases the channel (freeing those slots and spills) and lets the board be unmapped.
        self._reading = 0
        self._read = threading.Condition(self._lock)
        # The futures the owner's thread is ending (_end_unanswered), one after the other: a
        # done-callback of one that waits for another ends that one itself (_wait_in_owner_thread).
        self._ending: list[JobFuture] = []
        self._thread = threading.Thread(target=self._run, name=f"shmpool-client-{link.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # ----------------------------------------------------------------- the front's side

    def check_open(self) -> None:
        """Raise what a new job would meet: ClientClosed (forked, shut down, closed) or the
        error that broke the client (the coordinator is gone)."""
        self.link.check_process()
        if self.broken is not None:
            raise self.broken
        if self.lifecycle is not Lifecycle.OPEN:
            raise ClientClosed(name=self.link.name, reason=_WHY_NOT_OPEN[self.lifecycle])

    def begin_submit(self) -> None:
        """Admit one submit (or raise as :meth:`check_open`); end it with :meth:`end_submit`.

        The submit holds the Link until it ends: an owner that detaches meanwhile (its
        coordinator died) must not unmap the board under a submit still waiting for a slot."""
        link = self.link
        link.check_process()  # before any lock: one copied into a child may be held
        with self._lock:
            if self.broken is not None or self.lifecycle is not Lifecycle.OPEN:
                self.check_open()
            if not link.hold():  # not while open: the owner lets go only once CLOSED
                raise ClientClosed(name=link.name, reason=_WHY_NOT_OPEN[Lifecycle.CLOSED])
            self.submitting += 1

    def end_submit(self, future: JobFuture | None) -> None:
        """Register the submitted ``future`` (None: the submit failed) and end the submit."""
        try:
            with self._lock:
                self.submitting -= 1
                # The common case in full here: one lock round, no list (a submit a job).
                if (future is None or self.lifecycle is Lifecycle.CLOSED or self.broken is not None
                        or future._slot in self._early):
                    pass
                else:
                    self._table[future._slot] = future
                    future = None
            if future is not None:
                self.register([future])
        finally:
            self.link.drop()

    def register(self, futures: list[JobFuture], *, ending: bool = False) -> None:
        """Register submitted futures under one lock (a batch of ``map``'s, or the one of a
        submit: ``ending`` also ends that submit, under the same lock)."""
        early: list[JobFuture] = []
        late: list[JobFuture] = []
        with self._lock:
            if ending:
                self.submitting -= 1
            if self.lifecycle is Lifecycle.CLOSED or self.broken is not None:
                late = futures  # nobody will deliver them: end them now
            else:
                table, parked = self._table, self._early
                for future in futures:
                    if future._slot in parked:
                        parked.discard(future._slot)
                        early.append(future)
                    else:
                        table[future._slot] = future
        if early:
            self._settle_all(early)
        if late:
            self._end_unanswered(late)

    def withdraw(self, future: JobFuture) -> bool:
        """Withdraw ``future``'s request from the board and the table (JobFuture.cancel).

        The future leaves the table *before* the board's withdraw: once withdrawn, a worker may
        free the slot and another submit of ours take it at once, so an entry still under it
        would be overwritten by that submit (this future then lost) or popped for that job's
        answer (given to this future). Meanwhile it counts as a submit not yet registered (the
        owner does not detach under it), and an answer for the slot is parked in ``_early``;
        a withdraw that fails puts the future back through :meth:`register`, which settles it
        with such an answer."""
        link = self.link
        if not link.hold():
            return False  # detached: the detach settled it
        try:
            with self._lock:
                if self._table.get(future._slot) is not future:
                    return False  # being settled already (answered, or a detach took it)
                del self._table[future._slot]
                self.submitting += 1
            withdrawn = False
            try:
                withdrawn = link.withdraw(future._slot, future._seq)
            finally:
                if withdrawn:
                    with self._lock:
                        self.submitting -= 1
                else:
                    self.register([future], ending=True)
            return withdrawn
        finally:
            link.drop()

    def pending(self) -> list[JobFuture]:
        with self._lock:
            return list(self._table.values())

    def table(self) -> dict[int, JobFuture]:
        """A copy of slot -> pending future (diagnostics and tests)."""
        with self._lock:
            return dict(self._table)

    def shut_down(self) -> None:
        with self._lock:
            if self.lifecycle is Lifecycle.OPEN:
                self.lifecycle = Lifecycle.SHUTTING_DOWN
        self._stop_requested.set()

    def close(self) -> None:
        with self._lock:
            self.close_requested = True
            if self.lifecycle in (Lifecycle.OPEN, Lifecycle.SHUTTING_DOWN):
                self.lifecycle = Lifecycle.CLOSING
        self._stop_requested.set()

    def client_dropped(self) -> None:
        """The Client's finalizer: finish what is pending, then detach. A plain store, no lock:
        it may run in any thread, at any point, a garbage collection reaches the Client."""
        self.dropped = True

    def in_owner_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the detach (True once done); at once from the owner's own thread."""
        if self.in_owner_thread() or not self._thread.is_alive():
            return not self._thread.is_alive()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ----------------------------------------------------------------- the owner's thread

    def _run(self) -> None:
        link, board, channel = self.link, self.link.board, self.channel
        next_tidy = 0.0
        try:
            while not self._finished():
                try:
                    posted = board.wait_completions(channel, POLL)
                except ShmPoolError as exc:  # the coordinator removed the board
                    self.broken = exc
                    break
                if not posted and not link.coordinator_alive():
                    self.broken = link.gone()
                    break
                # Read even without a post: a worker may have died between pushing and posting.
                with self._drain_lock:  # a waiter helping: it is doing our work, wait for it
                    done = board.completed(channel)
                self._deliver(done)
                now = time.monotonic()
                if now >= next_tidy:
                    self.direct.tidy_idle(now)
                    next_tidy = now + SPENT_IDLE
        except BaseException as exc:  # never die silently with futures pending
            logger.opt(exception=exc).error("client of {!r}: completion thread failed", link.name)
            self.broken = exc
        finally:
            if self.broken is not None:
                # Every pending job fails now; the mappings stay until the client is closed,
                # shut down or dropped: a stopped instance unmaps nothing under its clients.
                with self._drain_lock:
                    self._end_unanswered(self._take_table())
                while not (self.close_requested or self.dropped or self.lifecycle is not Lifecycle.OPEN):
                    self._stop_requested.wait(POLL)
            with self._drain_lock:  # no helper reads the ring while the channel is released
                self._detach()

    def help(self, future: JobFuture, timeout: float | None) -> float | None:
        """Drain the channel in the calling thread while it waits for ``future`` (result()):
        the answers are decoded and settled here, with no hand-off to the owner's thread and
        back (two wake-ups and two GIL switches a wait, measured ~40 us of CPU a job for a
        lone submit().result()). Only while nobody else reads the ring, and only for slices
        in which answers keep coming: on a quiet slice, a closed or broken client, the owner
        takes over (liveness checks, detach). Returns what is left of ``timeout``.

        Only with other futures pending too (``map``, a pipeline): for a lone future the owner's
        thread, asleep on the same ring, would be woken by the answer as well and then wait for
        the lock and the GIL (measured: 60 us of client CPU a lone job with help, 28-40 without).

        In the owner's own thread (a done-callback waiting for another job of this client) it
        always drains, until ``future`` is done: nobody else would read the answer."""
        if self.in_owner_thread():
            return self._wait_in_owner_thread(future, timeout)
        if len(self._table) < HELP_MIN_PENDING or self.broken is not None or self.lifecycle is Lifecycle.CLOSED:
            return timeout
        drain = self._drain_lock
        if not drain.acquire(blocking=False):
            return timeout  # the owner's thread (or another waiter) is reading the ring
        deadline = None if timeout is None else time.monotonic() + timeout
        collect, channel = self.link.board.core.collect, self.channel
        # The lock covers the ring alone (its one consumer); the answers popped are ours to
        # decode and settle after it is released, so a done-callback that runs here may wait on
        # another future, or shut the client down, without waiting on a lock this thread holds.
        while True:
            try:
                wait = POLL if deadline is None else min(POLL, deadline - time.monotonic())
                done = collect(channel, wait) if wait > 0 and not self._detached() else []
            except ShmPoolError:  # the board is gone: the owner's thread finds out, fails the rest
                done = []
            finally:
                drain.release()
            if not done:
                break
            self._deliver(done)
            if future._state not in (_PENDING, _RUNNING) or not drain.acquire(blocking=False):
                break
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _wait_in_owner_thread(self, future: JobFuture, timeout: float | None) -> float | None:
        """A done-callback, run by this thread, waits for ``future``: drain the ring here until
        it is done, or ``timeout`` passes (returns what is left of it). Without this the answer
        sat in the ring while its one reader waited for it: result(t) raised TimeoutError after
        t, result() hung for ever. One that finds the coordinator gone fails ``future`` with
        that, as the owner's next round would. A callback run while the owner ends every
        pending future (a detach, a broken owner: the drain lock held here) ends ``future`` now
        if it is one of them, as the owner would after the callback returns; any other it waits
        for as any thread does (a helper that popped its answer settles it)."""
        if any(ending is future for ending in self._ending):
            self._end_one(future, self._ending_error())
            return timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        collect, channel, drain = self.link.board.core.collect, self.channel, self._drain_lock
        while future._state in (_PENDING, _RUNNING) and self.broken is None and not self._detached():
            wait = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            if wait <= 0:
                break
            if not drain.acquire(blocking=False):  # a waiter helping reads the ring: wait for it
                with future._condition:
                    if future._state in (_PENDING, _RUNNING):
                        future._condition.wait(wait)
                continue
            try:
                done = collect(channel, wait)
            except ShmPoolError:  # the board is gone: the owner's next round finds out
                done = []
            finally:
                drain.release()
            if done:
                self._deliver(done)
            elif not self.link.coordinator_alive():
                with self._lock:
                    mine = self._table.get(future._slot) is future
                    if mine:
                        del self._table[future._slot]
                if mine:
                    settle(future, Outcome(None, self.link.gone()))
                break
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def deliver_waiting(self) -> None:
        """In the owner's thread, busy in a done-callback that waits for a slot or for room:
        deliver (free, settle) the answers the ring holds now, without waiting."""
        if self.broken is not None or self._detached() or not self._drain_lock.acquire(blocking=False):
            return  # ending, or a waiter helping reads the ring (and frees what it pops)
        try:
            done = self.link.board.core.collect(self.channel, 0)
        except ShmPoolError:  # the board is gone: the owner's next round finds out
            done = []
        finally:
            self._drain_lock.release()
        self._deliver(done)

    def _detached(self) -> bool:
        return self.lifecycle is Lifecycle.CLOSED  # read afresh: another thread detaches

    def _finished(self) -> bool:
        with self._lock:
            if self.submitting:
                return False  # it registers soon; a submit waiting for a slot needs our frees
            if self.lifecycle is Lifecycle.CLOSING:
                return True
            return (self.lifecycle is Lifecycle.SHUTTING_DOWN or self.dropped) and not self._table

    def _deliver(self, finished: list[int]) -> None:
        if not finished:
            return
        ready = []
        with self._lock:  # one acquisition for the whole batch
            for slot in finished:
                future = self._table.pop(slot, None)
                if future is None:
                    self._early.add(slot)  # its submit has not registered it yet
                else:
                    ready.append(future)
        self._settle_all(ready)

    def _settle_all(self, futures: list[JobFuture]) -> None:
        """Decode each answer, free all their slots in one lock round, then settle the futures.

        Counted in ``_reading`` meanwhile: a thread that popped these answers (a waiter
        helping, a submit settling an early answer) must not read their slots and spills while
        the owner's detach releases the channel (which frees both) and unmaps the board, so the
        detach waits for the count to drop. After a detach they are gone: ClientClosed. The
        count, not the drain lock: a helper holds that while it sleeps on the ring, and the
        owner's settling would wait out its sleep."""
        if not futures:
            return
        with self._lock:
            detached = self.lifecycle is Lifecycle.CLOSED
            if not detached:
                self._reading += 1
        if detached:
            error = ClientClosed(name=self.link.name, reason="close() was called while the job was pending")
            outcomes = [Outcome(None, error)] * len(futures)
        else:
            try:
                outcomes = [self.link.outcome(f._slot, f._seq, f.job) for f in futures]
                self.link.board.release_slots([(f._slot, f._seq) for f in futures])
            finally:
                with self._lock:
                    self._reading -= 1
                    # Only a detach waits, and it marks CLOSED under this lock first: no notify
                    # per settled batch of an open client (~0.4 us each, measured).
                    if not self._reading and self.lifecycle is Lifecycle.CLOSED:
                        self._read.notify_all()
        for future, outcome in zip(futures, outcomes):
            settle(future, outcome)

    def _end_unanswered(self, futures: list[JobFuture]) -> None:
        """At detach: withdraw what no worker has taken (cancelled), fail the rest."""
        error = self._ending_error()
        owner = self.in_owner_thread()
        if owner:  # restored after: a callback run here could end others (nested)
            previous, self._ending = self._ending, futures
        try:
            for future in futures:
                self._end_one(future, error)
        finally:
            if owner:
                self._ending = previous
        if futures:
            logger.debug("client of {!r} ended {} unanswered jobs: {}", self.link.name, len(futures), error)

    def _ending_error(self) -> BaseException:
        if self.broken is not None:
            return self.broken
        return ClientClosed(name=self.link.name, reason="close() was called while the job was pending")

    def _end_one(self, future: JobFuture, error: BaseException) -> None:
        """End one of ``_end_unanswered``'s futures, unless a done-callback waiting for it did."""
        if future.done():
            return
        if self.broken is None and self.link.withdraw(future._slot, future._seq, timeout=CANCEL_WAIT):
            if Future.cancel(future):
                future.set_running_or_notify_cancel()
            return
        settle(future, Outcome(None, error))

    def _take_table(self, *, detached: bool = False) -> list[JobFuture]:
        with self._lock:
            if detached:
                self.lifecycle = Lifecycle.CLOSED
            unanswered = list(self._table.values())
            self._table.clear()
            self._early.clear()  # their slots are DELIVERED to our channel: its release frees them
        return unanswered

    def _detach(self) -> None:
        unanswered = self._take_table(detached=True)
        with self._lock:  # CLOSED now: no reading starts; wait for those under way (_settle_all)
            self._read.wait_for(lambda: not self._reading)
        try:
            self._end_unanswered(unanswered)
            self.direct.close()
            self.link.release_channel(self.channel)
        finally:
            self.link.drop()
