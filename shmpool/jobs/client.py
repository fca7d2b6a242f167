"""Submitting jobs to a coordinator's worker pool from any process: ``shmpool.connect(name)``.

A Client is a concurrent.futures.Executor: ``submit`` returns a Future, ``map`` keeps order (with
``timeout`` bounding the whole call and ``chunksize`` batching), ``shutdown(wait, cancel_futures)``
and the context manager end it, waiting for running jobs. On top: ``imap_unordered`` (streaming
with a bounded number in flight), ``call`` (synchronous, cheaper), ``acall``/``asubmit`` (asyncio,
no thread per call), and ``close()`` (detach at once). One Client may be shared by many threads.
A completion thread per client drains the client's completion ring and resolves futures; layer
results arrive as references and are resolved against this process's own mapping, so they cost
no copy and keep their generation pinned while held.

What runs: a callable (any importable module-level function, builtins included) runs in a worker
as ``fn(*args, **kwargs)``; a job *name* (a string: a built-in such as ``"lookup"``, a ``jobs=``
name, or ``"module:function"``) runs as ``fn(reader, *args, **kwargs)`` with the worker's Reader
first. Where shmpool differs from ProcessPoolExecutor on purpose: arguments and results are
msgpack data (shmpool/jobs/codec.py), never pickle, and a job is sent by name, never as code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import itertools
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, Callable, Iterable, Iterator

import posix_ipc
from loguru import logger

from .callables import target_of
from .codec import RequestFlags, check_job_timeout, decode_error, decode_result, encode_request
from ..data.context import ContextCollection, LoadedContext, NavigationPath, Step
from ..errors import AttachError, ClientClosed, InvalidArgument, RequestTooLarge, ShmPoolError
from ..substrate.ids import as_id
from .jobboard import JobBoard
from .jobs_layout import Status
from ..substrate.lock import interrupted_waits_retry
from ..data.reader import Reader, attach
from .spill import free_spill, open_spill
from .spin import spin_seconds

__all__ = ["Client", "connect", "JobFuture"]

POLL = 0.1  # seconds between coordinator liveness checks while idle
DIRECT_CALLS_MAX = 4  # concurrent call()s per client that wait on their own channel
SPENT_IDLE = 0.05  # seconds a call() thread may keep its last answer's slot before it is freed
CANCEL_WAIT = 0.05  # seconds a timed-out call() gives the lock to withdraw its request
IMAP_BUFFER = 64  # imap_unordered's default number of jobs in flight
# asubmit blocks its event loop at most this long for a slot (or the board's lock); past it, it
# retries from the loop with sleeps growing to ASYNC_RETRY_MAX, so no thread is ever needed.
ASYNC_SUBMIT_WAIT = 0.001
ASYNC_RETRY_MAX = 0.02
_NAMES_CACHED = 1024  # callables whose module:qualname is remembered (checked once each)


class Lifecycle(enum.Enum):
    """A Client's states: only OPEN takes new jobs (ClientClosed otherwise)."""
    OPEN = "open"
    SHUTTING_DOWN = "shut down, waiting for its jobs"
    CLOSED = "closed"


class JobFuture(Future):
    """A Future whose ``cancel()`` also withdraws the request while no worker has taken it, and
    whose ``running()`` is True while a worker runs it (read from the slot in shared memory).

    ``cancel()`` of a running job returns False and the job runs on, as in concurrent.futures;
    bound a job's run time with ``job_timeout`` instead."""

    def __init__(self, board: JobBoard, slot: int, seq: int, job: str, forget=None) -> None:
        super().__init__()
        self._board, self._slot, self._seq, self.job = board, slot, seq, job
        self._forget = forget  # drops our entry from the client's table once withdrawn

    def cancel(self) -> bool:
        with self._condition:
            if self.done():
                return self.cancelled()
        if not self._board.cancel(self._slot, self._seq):
            return False
        if self._forget is not None:
            # The slot goes back to the free stack and may carry this client's next job: a
            # stale entry left under it would swallow that job's answer.
            self._forget(self._slot, self._seq)
        return super().cancel()

    def running(self) -> bool:
        if self.done() or self._board.closed:
            return False
        # The slot cannot move to another job while this future is pending: it is freed only
        # after its response was delivered here. So STATE alone speaks for our SEQ.
        return self._board.is_running(self._slot, self._seq)


_END = object()


def _batched(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


class _ThreadChannel:
    """A channel of Client.call, borrowed by one calling thread at a time (the client's pool).

    ``spent`` is the (slot, seq) of the channel's last answer, still DELIVERED: the next call on
    it frees it in the lock round of its own submit (saving one lock round per call), or the
    completion thread frees it once the channel has been idle for SPENT_IDLE.
    """
    __slots__ = ("channel", "sem", "stale", "spent", "spent_at", "guard")

    def __init__(self, channel: int, sem) -> None:
        self.channel, self.sem, self.stale = channel, sem, set()
        self.spent: tuple[int, int] | None = None
        self.spent_at = 0.0
        self.guard = threading.Lock()

    def take_spent(self) -> tuple[int, int] | None:
        with self.guard:
            slot, self.spent = self.spent, None
        return slot


class Client(concurrent.futures.Executor):
    """A connection to the worker pool of running instance ``name``: an Executor. Thread-safe.

    Raises ClientClosed (a RuntimeError, as concurrent.futures raises after shutdown) when used
    after ``shutdown()`` or ``close()``, and AttachError once the coordinator is gone.
    """

    def __init__(self, name: str, *, timeout: float | None = None, spin_us: float | None = None) -> None:
        self.name = name
        self._spin = spin_seconds(spin_us)
        self._reader: Reader = attach(name, timeout=timeout)
        try:
            self._board = JobBoard.attach(name)
            self._channel = self._board.claim_channel(timeout=timeout)
        except BaseException:
            if getattr(self, "_board", None) is not None:
                self._board.close()
            self._reader.close()
            raise
        self._inst = self._reader.instance
        self._sem = self._board.channel_sem(self._channel)
        self._futures: dict[int, tuple[int, JobFuture]] = {}
        self._early: set[int] = set()
        self._thread_channels: list[int] = []  # call() channels, at most DIRECT_CALLS_MAX: the one bound
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when no submit is in progress
        self._submitting = 0  # submits past the lifecycle check, not yet registered
        self._lifecycle = Lifecycle.OPEN
        self._names: dict[Any, str] = {}
        self._deferred: list[tuple[int, int]] = []  # answers (slot, seq) a call() could not free in time
        self._channel_pool: list[_ThreadChannel] = []  # call() channels not borrowed right now
        self._next_spent_sweep = 0.0
        self._closed = False  # the completion thread's stop flag (detaching)
        self._broken: BaseException | None = None
        self._thread = threading.Thread(target=self._complete_loop, name=f"shmpool-client-{name}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- submitting

    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, timeout: float | None = None,
               job_timeout: float | None = None, **kwargs: Any) -> JobFuture:
        """Queue ``fn(*args, **kwargs)`` on a worker; returns a Future.

        ``fn`` is a callable (sent as its ``module:qualname``, run as ``fn(*args, **kwargs)``) or a
        job name (run as ``job(reader, *args, **kwargs)``, the worker's Reader first). Blocks while
        every slot is busy (back-pressure), for at most ``timeout`` seconds, then raises
        TimeoutError. ``job_timeout`` bounds the run in the worker (None: the coordinator's
        default): past it the worker is killed and the future fails with JobTimeout. Both names
        are therefore reserved and not passed to the job. Raises InvalidJob for a callable a
        worker cannot import (a lambda, a nested function, one of ``__main__``), TypeError for
        an argument msgpack cannot carry, RequestTooLarge, ClientClosed.
        """
        job, flags = self._job_of(fn)
        request = encode_request(job, args, kwargs, flags=flags, job_timeout=check_job_timeout(job_timeout))
        return self._submit_request(job, request, timeout)

    def _job_of(self, fn: Callable[..., Any] | str) -> tuple[str, RequestFlags]:
        """What crosses the board for ``fn``: its name, and how the worker calls it."""
        if isinstance(fn, str):
            return fn, RequestFlags.NAMED
        try:
            return self._names[fn], RequestFlags.PLAIN
        except (KeyError, TypeError):  # TypeError: an unhashable callable, checked every time
            pass
        target = target_of(fn, use="sent to a worker")
        if len(self._names) < _NAMES_CACHED:
            self._names[fn] = target
        return target, RequestFlags.PLAIN

    def _check_open(self) -> None:
        if self._broken is not None and not isinstance(self._broken, ClientClosed):
            raise self._broken
        if self._lifecycle is not Lifecycle.OPEN:
            raise ClientClosed(name=self.name, reason=f"it is {self._lifecycle.value}")

    def _submit_request(self, job: str, request: bytes, timeout: float | None) -> JobFuture:
        with self._lock:
            self._check_open()
            self._submitting += 1  # shutdown() waits for this submit to register its future
        try:
            slot, seq = self._post(self._channel, job, request, timeout)
            future = JobFuture(self._board, slot, seq, job, self._forget)
            with self._lock:
                self._futures[slot] = (seq, future)
                early = slot in self._early
                self._early.discard(slot)
        finally:
            with self._lock:
                self._submitting -= 1
                if not self._submitting:
                    self._idle.notify_all()
        if early:
            self._deliver(slot)
        return future

    def _post(self, channel: int, job: str, request: bytes, timeout: float | None,
              release: tuple[int, int] | None = None) -> tuple[int, int]:
        """Put ``request`` on the board for ``channel``: (slot, seq). The one place where the
        board's refusals become this API's: TimeoutError for no slot, RequestTooLarge naming the job."""
        try:
            return self._board.submit(channel, request, timeout=timeout, release=release,
                                      alive=self._coordinator_alive)
        except posix_ipc.BusyError:
            raise FuturesTimeout(f"no free job slot on {self.name!r} within {timeout} s "
                                 f"({self._board.slot_count} slots, all busy)") from None
        except RequestTooLarge as exc:
            raise RequestTooLarge(nbytes=exc.nbytes, capacity=exc.capacity, job=job) from None

    def map(self, fn: Callable[..., Any] | str, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1, job_timeout: float | None = None) -> Iterator[Any]:
        """Like Executor.map: ``fn`` over the iterables' items, results in order.

        ``timeout`` bounds the whole call, submission included: if every slot stays busy past it,
        what was queued is cancelled and TimeoutError raised here; a result not ready by then
        raises TimeoutError from the iterator. ``chunksize`` items travel and run as one job (the
        chunk's arguments must fit in ``job_payload``). Submission is eager; closing the iterator
        cancels what no worker has taken yet. A job's exception is raised when its item is reached.
        """
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise InvalidArgument(argument="chunksize", value=chunksize, reason="an int >= 1")
        end = None if timeout is None else time.monotonic() + timeout
        job, flags = self._job_of(fn)
        job_timeout = check_job_timeout(job_timeout)
        items = zip(*iterables)
        if chunksize > 1:
            flags |= RequestFlags.CHUNK
            items = ([list(args) for args in chunk] for chunk in _batched(items, chunksize))
        futures: list[JobFuture] = []
        try:
            for args in items:
                wait = None
                if end is not None:
                    wait = end - time.monotonic()
                    if wait <= 0:
                        raise FuturesTimeout(f"map of {job!r} could not submit all jobs within {timeout} s "
                                             f"({len(futures)} submitted)")
                request = encode_request(job, args, {}, flags=flags, job_timeout=job_timeout)
                futures.append(self._submit_request(job, request, wait))
        except BaseException:
            for future in futures:  # nothing of a map that failed to submit stays queued
                future.cancel()
            raise

        def results() -> Iterator[Any]:
            try:
                futures.reverse()  # popped in order, so a yielded result is not held here too
                while futures:
                    future = futures.pop()
                    value = future.result(None if end is None else end - time.monotonic())
                    if chunksize > 1:
                        yield from value
                    else:
                        yield value
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def imap_unordered(self, fn: Callable[..., Any] | str, iterable: Iterable, *, buffer: int = IMAP_BUFFER,
                       job_timeout: float | None = None) -> Iterator[Any]:
        """``fn(item)`` for each item, results as they complete, at most ``buffer`` jobs in flight.

        Items are read lazily (an endless iterable works), so memory and slots stay bounded.
        A job's exception is raised when its result comes up; closing the iterator (or an
        exception) cancels what is still queued.
        """
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise InvalidArgument(argument="buffer", value=buffer, reason="an int >= 1 (jobs in flight)")
        job, flags = self._job_of(fn)
        job_timeout = check_job_timeout(job_timeout)
        self._check_open()

        def results() -> Iterator[Any]:
            done: queue.SimpleQueue = queue.SimpleQueue()
            in_flight: set[JobFuture] = set()
            items = iter(iterable)
            try:
                while True:
                    while len(in_flight) < buffer:
                        item = next(items, _END)
                        if item is _END:
                            break
                        future = self._submit_request(job, encode_request(job, (item,), {}, flags=flags,
                                                                          job_timeout=job_timeout), None)
                        in_flight.add(future)
                        future.add_done_callback(done.put)
                    if not in_flight:
                        return
                    future = done.get()
                    in_flight.discard(future)
                    yield future.result()
            finally:
                for future in in_flight:
                    future.cancel()

        return results()

    # ----------------------------------------------------------------- asyncio

    def asubmit(self, fn: Callable[..., Any] | str, /, *args: Any, timeout: float | None = None,
                job_timeout: float | None = None, **kwargs: Any) -> "asyncio.Future[Any]":
        """``submit`` for a running event loop: returns an awaitable of the result.

        No thread per call: the completion thread resolves the future and the loop is told with
        ``call_soon_threadsafe`` (asyncio.wrap_future). When every slot is busy the loop is not
        blocked: the submission is retried from the loop, for at most ``timeout`` seconds.
        Cancelling the awaitable withdraws a job no worker has taken yet.
        """
        loop = asyncio.get_running_loop()
        job, flags = self._job_of(fn)
        request = encode_request(job, args, kwargs, flags=flags, job_timeout=check_job_timeout(job_timeout))
        try:
            return asyncio.wrap_future(self._submit_request(job, request, ASYNC_SUBMIT_WAIT), loop=loop)
        except (FuturesTimeout, TimeoutError):
            return loop.create_task(self._submit_later(job, request, timeout))

    async def _submit_later(self, job: str, request: bytes, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = ASYNC_SUBMIT_WAIT
        while True:
            await asyncio.sleep(pause)
            try:
                future = self._submit_request(job, request, ASYNC_SUBMIT_WAIT)
            except (FuturesTimeout, TimeoutError):
                if deadline is not None and time.monotonic() >= deadline:
                    raise FuturesTimeout(f"no free job slot on {self.name!r} within {timeout} s") from None
                pause = min(2 * pause, ASYNC_RETRY_MAX)
                continue
            return await asyncio.wrap_future(future)

    async def acall(self, fn: Callable[..., Any] | str, /, *args: Any, timeout: float | None = None,
                    job_timeout: float | None = None, **kwargs: Any) -> Any:
        """``await`` the result of ``fn(*args, **kwargs)`` in a worker (the asyncio ``call``).

        ``timeout`` bounds the slot wait and the result together (TimeoutError); a job still
        queued then is withdrawn, one already running finishes and its result is dropped.
        """
        awaitable = self.asubmit(fn, *args, timeout=timeout, job_timeout=job_timeout, **kwargs)
        if timeout is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except asyncio.TimeoutError:
            raise FuturesTimeout(f"job {self._job_of(fn)[0]!r} did not finish within {timeout} s") from None

    def lookup(self, dimension_id: int, layer_id: int, *, timeout: float | None = None) -> LoadedContext:
        """Run the built-in ``lookup`` job; the result is a zero-copy view resolved here."""
        # Checked here, not only in the worker: a np.bool_ would not even encode, and a bad id
        # should not cost a round trip. Raises InvalidId (a TypeError).
        dimension_id, layer_id = as_id(dimension_id, "dimension_id"), as_id(layer_id, "layer_id")
        return self.call("lookup", dimension_id, layer_id, timeout=timeout)

    def load_contexts(self, path: NavigationPath | Iterable[Step], *, strict: bool = True,
                      timeout: float | None = None) -> ContextCollection:
        steps = [list(s) for s in NavigationPath.of(path)]
        return self.call("load_contexts", steps, strict=strict, timeout=timeout)

    # ----------------------------------------------------------------- completions

    def _complete_loop(self) -> None:
        board, sem = self._board, self._sem
        while not self._closed:
            try:
                sem.acquire(POLL)
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                if not self._coordinator_alive():
                    self._fail_all(self._gone())
                    return
                # No post, but rescan the ring anyway: a worker may have died between pushing
                # our slot and posting; the ring, not the semaphore, is the truth.
            except posix_ipc.ExistentialError:
                self._fail_all(AttachError(name=self.name, reason="the coordinator removed the job board"))
                return
            finished = board.completed(self._channel)
            ready = []
            with self._lock:  # one acquisition for the whole batch
                done, self._deferred = self._deferred, []
                for slot in finished:
                    entry = self._futures.pop(slot, None)
                    if entry is not None and entry[0] != board.slot_seq(slot):
                        entry = None  # a withdrawn job's entry: the answer is a newer job's
                    if entry is None:
                        self._early.add(slot)  # its submit() has not registered it yet
                    else:
                        ready.append((slot, entry))
            outcomes = [(future, self._outcome(slot, seq, future.job)) for slot, (seq, future) in ready]
            done += [(slot, seq) for slot, (seq, _future) in ready]
            board.release_slots(done)  # one board lock round for the whole batch
            for future, outcome in outcomes:
                if future.set_running_or_notify_cancel():
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
            if time.monotonic() >= self._next_spent_sweep:
                self._release_idle_spent()

    def _deliver(self, slot: int, released: list[int] | None = None) -> None:
        """Resolve the slot's future; the slot goes back to the board now, or via ``released``."""
        with self._lock:
            seq, future = self._futures.pop(slot)
        outcome = self._outcome(slot, seq, future.job)
        if released is None:
            self._board.release_slot(slot, seq)
        else:
            released.append((slot, seq))
        if future.set_running_or_notify_cancel():
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _outcome(self, slot: int, seq: int, job: str) -> Any:
        """The decoded result (or the exception to raise) in a finished slot; frees a spill."""
        got_seq, status, data, spill = self._board.response(slot)
        handle = None
        try:
            if spill is not None:
                handle, data = open_spill(self._inst, spill)
            if got_seq != seq:
                return AttachError(name=self.name, reason=f"job slot {slot} was reused under us")
            if status == Status.OK:
                return decode_result(data, self._resolve)
            return decode_error(data, job)
        except BaseException as exc:  # a bad response must fail its caller, not the client
            return exc
        finally:
            if isinstance(data, memoryview):
                data.release()
            if handle is not None:
                free_spill(self._inst, handle)

    # ----------------------------------------------------------------- synchronous calls

    def call(self, fn: Callable[..., Any] | str, /, *args: Any, timeout: float | None = None,
             job_timeout: float | None = None, **kwargs: Any) -> Any:
        """``submit(fn, ...).result(timeout)``, faster for a few threads: the calling thread waits
        on a channel of its own and reads the response itself, saving the hand-off through the
        completion thread (one wake-up and one GIL switch per job). Beyond DIRECT_CALLS_MAX
        concurrent calls, or when every channel is taken, it goes through ``submit``.
        ``timeout`` bounds the wait for a slot and for the result together.
        """
        job, flags = self._job_of(fn)
        job_timeout = check_job_timeout(job_timeout)
        self._check_open()
        # With many threads waiting at once, each woken thread fights all others for the GIL and
        # the tail grows (128 threads: p99 30 -> 60 ms measured); the completion thread's batched
        # delivery is fairer there. So the direct path is for the few-threads case: the pool of
        # at most DIRECT_CALLS_MAX call() channels is the bound (a thread borrows one or none).
        deadline = None if timeout is None else time.monotonic() + timeout
        mine = self._thread_channel(timeout)
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
        if mine is None:
            request = encode_request(job, args, kwargs, flags=flags, job_timeout=job_timeout)
            return self._submit_request(job, request, timeout).result(timeout)
        try:
            return self._call_direct(mine, job, args, kwargs, timeout, flags, job_timeout)
        finally:
            self._return_channel(mine)

    def _call_direct(self, mine: "_ThreadChannel", job: str, args, kwargs, timeout: float | None,
                     flags: RequestFlags = RequestFlags.NAMED, job_timeout: float | None = None) -> Any:
        channel, sem, stale = mine.channel, mine.sem, mine.stale
        request = encode_request(job, args, kwargs, flags=flags, job_timeout=job_timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        if len(request) > self._board.payload:  # before the spent slot leaves our hands
            raise RequestTooLarge(nbytes=len(request), capacity=self._board.payload, job=job)
        spent = mine.take_spent()
        try:
            slot, seq = self._post(channel, job, request, timeout, spent)
        except BaseException:
            if spent is not None:  # freed already if submit got as far as its first lock round:
                with self._lock:   # a second release of the same (slot, seq) is a no-op
                    self._deferred.append(spent)
            raise
        board = self._board
        spun = self._spin and board.spin_for_ring(channel, self._spin)
        while True:
            wait = POLL if deadline is None else min(POLL, max(0.0, deadline - time.monotonic()))
            timed_out = False
            try:
                if spun:  # the answer is in the ring already; take its post if it came
                    spun = False
                    try:
                        sem.acquire(0)
                    except posix_ipc.BusyError:
                        pass
                else:
                    try:
                        sem.acquire(wait)
                    except posix_ipc.SignalError:
                        if not interrupted_waits_retry():
                            raise
                        raise posix_ipc.BusyError("interrupted") from None  # look, then wait again
            except posix_ipc.BusyError:
                if not self._coordinator_alive():
                    raise self._gone() from None
                # Rescan the ring even without a post: a worker may have died before posting.
                timed_out = deadline is not None and time.monotonic() >= deadline
            except posix_ipc.ExistentialError:
                raise AttachError(name=self.name, reason="the coordinator removed the job board") from None
            done = board.completed(channel)
            if slot not in done:
                self._drop_stale(done, stale, deadline)
                if timed_out:
                    if not board.cancel(slot, seq, timeout=CANCEL_WAIT):
                        stale.add(slot)  # running: its response will arrive later and be dropped
                    raise FuturesTimeout(f"job {job!r} did not finish within {timeout} s") from None
                continue
            if len(done) > 1:
                self._drop_stale([s for s in done if s != slot], stale, deadline)
            outcome = self._outcome(slot, seq, job)
            with mine.guard:  # freed by our next submit, or by the completion thread if we idle
                mine.spent, mine.spent_at = (slot, seq), time.monotonic()
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

    def _forget(self, slot: int, seq: int) -> None:
        with self._lock:
            entry = self._futures.get(slot)
            if entry is not None and entry[0] == seq:
                del self._futures[slot]

    def _release_idle_spent(self) -> None:
        """Completion thread: free the last answer slots of call() channels idle for SPENT_IDLE,
        and drop late answers to timed-out calls waiting in idle channels' rings."""
        now = time.monotonic()
        self._next_spent_sweep = now + SPENT_IDLE
        with self._lock:  # borrowed out of the pool while we look, so no call() uses them
            idle_channels, self._channel_pool = self._channel_pool, []
        try:
            idle = []
            for mine in idle_channels:
                with mine.guard:
                    if mine.spent is not None and now - mine.spent_at >= SPENT_IDLE:
                        idle.append(mine.spent)
                        mine.spent = None
                late = self._board.completed(mine.channel)
                if late:
                    self._drop_stale(late, mine.stale, now + SPENT_IDLE)
            if idle:
                try:
                    self._board.release_slots(idle, timeout=SPENT_IDLE)
                except TimeoutError:
                    with self._lock:
                        self._deferred.extend(idle)
        finally:
            with self._lock:
                self._channel_pool.extend(idle_channels)

    def _drop_stale(self, slots: list[int], stale: set[int], deadline: float | None = None) -> None:
        """Responses to calls that timed out: free their spills and slots."""
        for slot in slots:
            stale.discard(slot)
            response = self._board.response(slot)
            if response.data is not None:
                response.data.release()
            if response.spill is not None:
                free_spill(self._inst, response.spill)
        pairs = [(slot, self._board.slot_seq(slot)) for slot in slots]
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._board.release_slots(pairs, timeout=remaining)
        except TimeoutError:
            with self._lock:
                self._deferred.extend(pairs)

    def _thread_channel(self, timeout: float | None = None):
        """Borrow a call() channel: one from the pool, or a new one while fewer than
        DIRECT_CALLS_MAX exist. None when the board has no channel left (use submit).

        Channels belong to the client, not to threads: a client whose many long-lived threads
        each call() once still holds at most DIRECT_CALLS_MAX board channels.
        """
        with self._lock:
            if self._channel_pool:
                return self._channel_pool.pop()
            if len(self._thread_channels) >= DIRECT_CALLS_MAX:
                return None
            self._thread_channels.append(-1)  # reserved while we claim it
        try:
            channel = self._board.claim_channel(timeout=timeout)
        except BaseException as exc:
            with self._lock:
                self._thread_channels.remove(-1)
            if isinstance(exc, AttachError):
                return None  # every channel is taken: the shared one still works
            raise
        mine = _ThreadChannel(channel, self._board.channel_sem(channel))
        with self._lock:
            self._thread_channels[self._thread_channels.index(-1)] = channel
        return mine

    def _return_channel(self, mine: "_ThreadChannel") -> None:
        with self._lock:
            self._channel_pool.append(mine)

    def _resolve(self, dimension_id: int, layer_id: int, generation: int) -> LoadedContext:
        # The worker saw `generation`; this process maps the newest published one, which is the
        # same or later. Either way the bytes are whole and stay pinned while the context lives.
        return self._reader.load_layer_context(dimension_id, layer_id)

    def _coordinator_alive(self) -> bool:
        return self._inst.coordinator_alive()

    def _gone(self) -> AttachError:
        return AttachError(name=self.name, reason="the coordinator is gone" if self._inst.is_running()
                           else "the coordinator stopped before answering")

    def _fail_all(self, error: BaseException) -> None:
        self._broken = error
        with self._lock:
            pending = list(self._futures.values())
            self._futures.clear()
        for _seq, future in pending:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
        logger.debug("client of {!r} failed {} outstanding jobs: {}", self.name, len(pending), error)

    # ----------------------------------------------------------------- lifetime

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no new jobs (ClientClosed), let the submitted ones finish, then detach.

        ``wait``: return once every job submitted through this client is done and the client is
        detached; otherwise return at once and detach in the background when they are.
        ``cancel_futures``: cancel the jobs no worker has taken yet first (running ones finish:
        a running job cannot be withdrawn). Idempotent; the context manager calls
        ``shutdown(wait=True)``, as ProcessPoolExecutor's does.
        """
        with self._lock:
            if self._lifecycle is Lifecycle.OPEN:
                self._lifecycle = Lifecycle.SHUTTING_DOWN
        if cancel_futures:
            for future in self._pending():
                future.cancel()
        if wait:
            self._wait_for_jobs()
            self._detach()
        elif self._lifecycle is not Lifecycle.CLOSED:
            threading.Thread(target=self._detach_when_done, name=f"shmpool-client-{self.name}-shutdown",
                             daemon=True).start()

    def _pending(self) -> list[JobFuture]:
        with self._lock:
            return [future for _seq, future in self._futures.values()]

    def _wait_for_jobs(self) -> None:
        """Until no submit is in progress and every future of ours is done (or we broke)."""
        while True:
            with self._lock:
                while self._submitting:
                    self._idle.wait()
            pending = [future for future in self._pending() if not future.done()]  # cancelled ones linger
            if not pending or self._closed:
                return
            concurrent.futures.wait(pending)

    def _detach_when_done(self) -> None:
        try:
            self._wait_for_jobs()
        finally:
            self._detach()

    def close(self) -> None:
        """Detach now (idempotent): cancel what is still queued, fail what is running with
        ClientClosed (the job still runs; its result is dropped), release channels and reader.

        Unlike ``shutdown()`` it does not wait for running jobs.
        """
        with self._lock:
            if self._lifecycle is Lifecycle.OPEN:
                self._lifecycle = Lifecycle.SHUTTING_DOWN
        self._detach()

    def _detach(self) -> None:
        with self._lock:
            if self._lifecycle is Lifecycle.CLOSED:
                return
            self._lifecycle = Lifecycle.CLOSED
            while self._submitting:  # a submit past its check registers its future first
                self._idle.wait()
            pending = [future for _seq, future in self._futures.values()]
        for future in pending:
            future.cancel()
        self._closed = True
        if threading.current_thread() is not self._thread:
            self._thread.join(2 * POLL + 1)
        self._fail_all(ClientClosed(name=self.name, reason="close() was called while the job was pending"))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            # Still inside a done-callback, or waiting on a stopped lock holder: unmapping the
            # board under it would release the flock inside its critical section. Its channels
            # and mappings go when the process does (the dead-client sweep settles them).
            logger.warning("client of {!r} closed while its completion thread is busy; its channels are "
                           "released when this process ends", self.name)
            return
        try:
            spills = self._board.release_channel(self._channel)
        except ShmPoolError as exc:
            spills = []
            logger.debug("channel {} not released: {}", self._channel, exc)
        for channel in [c for c in self._thread_channels if c >= 0]:
            try:
                spills += self._board.release_channel(channel)
            except ShmPoolError as exc:
                logger.debug("channel {} not released: {}", channel, exc)
        for spill in spills:  # results that arrived after their reader stopped waiting
            free_spill(self._inst, spill)
        self._board.close()
        self._reader.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(wait=True)

    @property
    def reader(self) -> Reader:
        """This client's own reader (lookups here need no worker)."""
        return self._reader


def connect(name: str, *, timeout: float | None = None, spin_us: float | None = None) -> Client:
    """Connect to the worker pool of running instance ``name`` (AttachError if there is none).

    ``timeout`` bounds the wait for the board's lock (LockTimeout naming its holder).
    ``spin_us``: the low-latency mode of :meth:`Client.call`, which busy-waits up to that many
    microseconds for the answer before sleeping (see shmpool.jobs.spin; off by default, and "auto"
    turns it on only with at least SPIN_MIN_CPUS cores).
    """
    return Client(name, timeout=timeout, spin_us=spin_us)
