"""``Client.call``'s channels: the calling thread posts, waits and reads the answer itself.

This saves the hand-off through the completion owner (one wake-up and one GIL switch per job).
A client holds at most DIRECT_CALLS_MAX of them in a :class:`DirectPool`, whatever its number of
threads; a thread borrows one for one call, or none (then ``call`` goes through ``submit``).

A :class:`DirectChannel` owns the whole life of every slot it posted, so nothing of it is
shared with the completion owner's table:

- its last answer's slot stays DELIVERED as ``spent`` and is freed in the lock round of the
  channel's next submit (one lock round saved per call); once the channel has idled SPENT_IDLE,
  :meth:`DirectPool.tidy_idle` frees it, so an idle thread holds no capacity;
- an answer to a call that timed out while running arrives later: whoever reads the ring next
  (the next call, or the tidy) drops it;
- a release that could not get the board's lock in time waits in ``unreleased`` for the next
  tidy (a release is idempotent: the board frees a (slot, seq) only while it is still ours).

The tidy of idle channels runs in the completion owner's thread only because that thread wakes
every POLL anyway; it borrows the channels out of the pool while it works, so no call() can
hold one at the same time.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, Callable

from ..errors import AttachError, ClientClosed, RequestTooLarge
from .client_link import Link, Outgoing, Request

__all__ = ["DirectChannel", "DirectPool", "DIRECT_CALLS_MAX", "SPENT_IDLE"]

POLL = 0.1  # seconds between coordinator liveness checks while waiting
DIRECT_CALLS_MAX = 4  # concurrent call()s per client that wait on their own channel
SPENT_IDLE = 0.05  # seconds a call() channel may keep its last answer's slot before it is freed
CANCEL_WAIT = 0.05  # seconds a timed-out call() gives the lock to withdraw its request


class DirectChannel:
    """A board channel borrowed by one calling thread at a time (see the module docstring)."""
    __slots__ = ("channel", "spent", "spent_at", "unreleased")

    def __init__(self, channel: int) -> None:
        self.channel = channel
        self.spent: tuple[int, int] | None = None
        self.spent_at = 0.0
        self.unreleased: list[tuple[int, int]] = []

    def call(self, link: Link, job: str, request: Request, timeout: float | None, spin: float,
             abandoned: Callable[[], bool]) -> Any:
        """Post ``request``, wait for its answer on this channel and return it (or raise it).

        ``abandoned()`` True (the client was closed) ends the wait with ClientClosed."""
        board, channel = link.board, self.channel
        data = request.data if isinstance(request, Outgoing) else request
        if len(data) > board.payload:  # refused before the spent slot leaves our hands
            raise RequestTooLarge(nbytes=len(data), capacity=board.payload, job=job)
        deadline = None if timeout is None else time.monotonic() + timeout
        spent, self.spent = self.spent, None
        try:
            slot, seq = link.post(channel, job, request, timeout, spent, abandoned, direct=True)
        except BaseException:
            if spent is not None:  # freed already if the submit got to its first lock round
                self.unreleased.append(spent)
            raise
        collect = board.core.collect
        # The first wait: the spin (low-latency mode), else the whole slice. One call into the
        # core waits on the ring and pops it; usually it returns our answer alone.
        if spin and board.spin_for_ring(channel, spin):
            done = collect(channel, 0)
        else:
            done = collect(channel, POLL if deadline is None else min(POLL, max(0.0, deadline - time.monotonic())))
        while slot not in done:
            if done:
                self._drop(link, done)
            elif not link.coordinator_alive():  # nothing within a slice: is anyone still there?
                raise link.gone()
            if abandoned():
                self._withdraw(link, slot, seq)
                raise ClientClosed(name=link.name, reason="close() was called while the job was pending")
            if not done and deadline is not None and time.monotonic() >= deadline:
                self._withdraw(link, slot, seq)
                raise FuturesTimeout(f"job {job!r} did not finish within {timeout} s")
            done = collect(channel, POLL if deadline is None else min(POLL, max(0.0, deadline - time.monotonic())))
        if len(done) > 1:
            self._drop(link, [s for s in done if s != slot])
        outcome = link.outcome(slot, seq, job)
        self.spent, self.spent_at = (slot, seq), time.monotonic()
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    def _withdraw(self, link: Link, slot: int, seq: int) -> None:
        # A queued request is withdrawn; a running one finishes, and its late answer is dropped
        # by whoever reads this channel's ring next.
        link.withdraw(slot, seq, timeout=CANCEL_WAIT)

    def _drop(self, link: Link, slots: list[int]) -> None:
        """Answers to calls that gave up: free their spills and slots."""
        if not slots:
            return
        for slot in slots:
            link.discard_answer(slot)
        self.unreleased += [(slot, link.board.slot_seq(slot)) for slot in slots]
        self._release_unreleased(link, SPENT_IDLE)

    def _release_unreleased(self, link: Link, timeout: float) -> None:
        pairs, self.unreleased = self.unreleased, []
        try:
            link.board.release_slots(pairs, timeout=timeout)
        except TimeoutError:  # the board's lock is busy: the next tidy tries again
            self.unreleased = pairs + self.unreleased

    def tidy(self, link: Link, now: float) -> None:
        """While idle: free the spent slot once SPENT_IDLE old, drop late answers, retry releases."""
        if self.spent is not None and now - self.spent_at >= SPENT_IDLE:
            self.unreleased.append(self.spent)
            self.spent = None
        late = link.board.completed(self.channel)
        if late:
            self._drop(link, late)
        elif self.unreleased:
            self._release_unreleased(link, SPENT_IDLE)


class DirectPool:
    """The client's call() channels: at most ``limit``, claimed on first need, lent one at a time.

    Each borrowed channel holds the Link, so the board stays mapped under a call() that outlives
    the client's detach; such a channel is released by its borrower when it comes back."""

    def __init__(self, link: Link, limit: int = DIRECT_CALLS_MAX) -> None:
        self._link = link
        self._limit = limit
        self._lock = threading.Lock()
        self._idle: list[DirectChannel] = []
        self._claimed = 0  # channels claimed (or being claimed), idle or lent
        self._closed = False

    def borrow(self, timeout: float | None) -> DirectChannel | None:
        """An idle channel, or a newly claimed one while fewer than ``limit`` exist; None when
        the pool is closed, full, or the board has no channel left (the caller uses submit)."""
        with self._lock:
            if self._closed or not self._link.hold():
                return None
            if self._idle:
                return self._idle.pop()
            if self._claimed >= self._limit:
                self._link.drop()
                return None
            self._claimed += 1
        try:
            return DirectChannel(self._link.board.claim_channel(timeout=timeout))
        except BaseException as exc:
            with self._lock:
                self._claimed -= 1
            self._link.drop()
            if isinstance(exc, AttachError):
                return None  # every channel is taken: the shared one still works
            raise

    def give_back(self, mine: DirectChannel) -> None:
        with self._lock:
            keep = not self._closed
            if keep:
                self._idle.append(mine)
            else:
                self._claimed -= 1
        if not keep:
            self._link.release_channel(mine.channel)
        self._link.drop()

    def tidy_idle(self, now: float) -> None:
        """Completion owner, every SPENT_IDLE: :meth:`DirectChannel.tidy` each idle channel."""
        with self._lock:  # borrowed out of the pool while we look, so no call() uses them
            idle, self._idle = self._idle, []
        try:
            for mine in idle:
                mine.tidy(self._link, now)
        finally:
            with self._lock:
                self._idle.extend(idle)

    def close(self) -> None:
        """Lend no more; release the idle channels now, the lent ones when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._claimed -= len(idle)
        for mine in idle:
            self._link.release_channel(mine.channel)
