"""Submitting jobs to a coordinator's worker pool from any process: ``shmpool.connect(name)``.

A Client is a concurrent.futures.Executor: ``submit`` returns a Future, ``map`` keeps order (with
``timeout`` bounding the whole call and ``chunksize`` batching), ``shutdown(wait, cancel_futures)``
and the context manager end it, waiting for running jobs. On top: ``imap_unordered`` (streaming
with a bounded number in flight), ``call`` (synchronous, cheaper), ``acall``/``asubmit`` (asyncio,
no thread per call), and ``close()`` (detach at once). One Client may be shared by many threads.
Layer results arrive as references and are resolved against this process's own mapping, so they
cost no copy and keep their generation pinned while held.

Its parts, in the shape of CPython's ``concurrent/futures/process.py``:

- this front (:class:`Client`) only submits: it checks the state, posts the request and hands
  the future to the owner; it holds no result and settles nothing;
- one completion owner per channel (shmpool/jobs/client_owner.py): a thread that drains the
  client's ring and settles every future of ``submit``, then detaches; it does not hold the
  Client, so a Client dropped without ``shutdown()`` is collected and its channel released;
- the direct ``call()`` channels (shmpool/jobs/client_direct.py), which own their slots from
  submit to release, with nothing shared with the owner's table;
- what they share (shmpool/jobs/client_link.py): the reader and board, the decoding of an
  answer, fork detection, and ``settle(future, outcome)``, the one function that settles a future.

What runs: a callable (any importable module-level function, builtins included) runs in a worker
as ``fn(*args, **kwargs)``; a job *name* (a string: a built-in such as ``"lookup"``, a ``jobs=``
name, or ``"module:function"``) runs as ``fn(reader, *args, **kwargs)`` with the worker's Reader
first. Where shmpool differs from ProcessPoolExecutor on purpose: arguments and results are
msgpack data (shmpool/jobs/codec.py), never pickle, and a job is sent by name, never as code.

Fork: a Client belongs to the process that connected. In a forked child it refuses every use
with ClientClosed ("connect again in the child"), and closing or dropping it there releases
nothing of its parent's (docs/usage.md, "Processes and fork").
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import time
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, cast

from ..substrate._log import logger

from .callables import target_of
from .codec import RequestFlags, check_job_timeout
from ..data.context import ContextCollection, LoadedContext, NavigationPath, StepLike
from ..errors import AttachError, InvalidArgument, InvalidArgumentType, NotPicklable
from .jobboard import JOBS
from ..substrate.instance import CONTROL
from ..substrate.names import segment_name
from ..substrate.trust import shm_path
from ..substrate.ids import LayerKey, as_id
from ..data.reader import Reader
from .client_direct import DIRECT_CALLS_MAX, POLL, DirectPool
from .client_link import Link, Outgoing, Request
from .client_owner import CompletionOwner, JobFuture, Lifecycle
from .spin import spin_seconds
from ..substrate.timeouts import check_timeout

if TYPE_CHECKING:
    import asyncio

__all__ = ["Client", "connect", "JobFuture", "DIRECT_CALLS_MAX"]

IMAP_BUFFER = 64  # imap_unordered's default number of jobs in flight
# map submits its chunks in batches of one lock round each, growing from the first (workers
# start on it while the client encodes the next) to MAP_BATCH (a wake-up and a lock round per
# batch, against one per chunk: 166k -> ... items/s measured, docs/performance.md).
MAP_FIRST_BATCH = 2
MAP_BATCH = 64
# asubmit blocks its event loop at most this long for a slot (or the board's lock); past it, it
# retries from the loop with sleeps growing to ASYNC_RETRY_MAX, so no thread is ever needed.
ASYNC_SUBMIT_WAIT = 0.001
ASYNC_RETRY_MAX = 0.02
# A waiting asubmit with a spilled array tries when a slot is free, and anyway after this long
# without a try (doubling up to ASYNC_SPILLED_TRY_MAX): blocking submitters take a freed slot
# within microseconds, so a retry that only looked for a free slot could wait behind them for
# ever. Each such try copies the array (and frees it if no slot takes it).
ASYNC_SPILLED_TRY_EVERY = 0.1
ASYNC_SPILLED_TRY_MAX = 1.0
CLOSE_WAIT = 2 * POLL + 1  # seconds close() waits for the owner's detach (a hang only if stuck)
_NAMES_CACHED = 1024  # callables whose module:qualname is remembered (checked once each)


_END = object()


def _iterate(value: Any, argument: str) -> Iterator[Any]:
    """``iter(value)``; InvalidArgumentType naming ``argument`` if it is not iterable."""
    try:
        return iter(value)
    except TypeError:
        raise InvalidArgumentType(argument=argument, value=value, reason="not iterable") from None


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


class Client(concurrent.futures.Executor):
    """A connection to the worker pool of running instance ``name``: an Executor. Thread-safe.

    Raises ClientClosed (a RuntimeError, as concurrent.futures raises after shutdown) when used
    after ``shutdown()`` or ``close()``, or in a child forked after the connect, and AttachError
    once the coordinator is gone. Dropped without ``shutdown()``, it finishes the jobs still
    pending and releases its channels in the background, as ProcessPoolExecutor does.
    """

    def __reduce__(self) -> Any:
        raise NotPicklable(what="client", hint="send the instance's name and connect again in the other process")

    def __init__(self, name: str, *, timeout: float | None = None, spin_us: float | None = None) -> None:
        self.name = name
        timeout = check_timeout(timeout)
        self._spin = spin_seconds(spin_us)
        self._names: dict[Any, str] = {}
        began = time.monotonic()
        link = Link(name, timeout=timeout)
        try:
            # One timeout for the connect as a whole: the claim gets what the Link left of it.
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - began))
            channel = link.board.claim_channel(timeout=left)
        except BaseException:
            link.drop()
            raise
        self._link = link
        self._direct = DirectPool(link)
        self._owner = CompletionOwner(link, channel, self._direct)
        # The owner's thread holds the owner, never this front: once the front is collected,
        # the owner finishes what is pending and detaches (CPython's executor weakref callback).
        weakref.finalize(self, self._owner.client_dropped).atexit = False
        self._owner.start()

    # ----------------------------------------------------------------- submitting

    # Wider than Executor.submit on purpose: ``fn`` may be a job name, and ``timeout`` and
    # ``job_timeout`` are this API's keywords (reserved, never passed to the job).
    def submit(self, fn: Callable[..., Any] | str, /, *args: Any,  # type: ignore[override]
               timeout: float | None = None, job_timeout: float | None = None, **kwargs: Any) -> JobFuture:
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
        timeout = check_timeout(timeout)
        job, flags = self._job_of(fn)
        request = self._link.encode(job, args, kwargs, flags=flags, job_timeout=check_job_timeout(job_timeout))
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
        self._owner.check_open()

    def _submit_request(self, job: str, request: Request, timeout: float | None) -> JobFuture:
        owner = self._owner
        owner.begin_submit()  # shutdown() and close() wait for this submit to register its future
        future = None
        try:
            slot, seq = self._link.post(owner.channel, job, request, timeout, abandoned=self._abandoned)
            future = JobFuture(owner, slot, seq, job)
        finally:
            owner.end_submit(future)
        return future

    def _submit_requests(self, job: str, requests: Iterator[Request], end: float | None) -> list[JobFuture]:
        """Submit a stream of requests (``map``'s chunks) in batches, one lock round and one
        wake-up each, by ``end`` (time.monotonic; None: no limit). Each batch is registered as
        soon as it is queued (its answers free the slots a later batch may wait for), and the
        first are small, so workers start while the rest is still being encoded. If the stream
        fails part-way (an argument msgpack cannot carry, no slot in time), what was queued is
        cancelled before the error is raised."""
        futures: list[JobFuture] = []
        owner = self._owner
        size = MAP_FIRST_BATCH
        batch = list(itertools.islice(requests, size))
        if not batch:
            return futures
        owner.begin_submit()
        try:
            while batch:
                timeout = None if end is None else end - time.monotonic()
                for queued in self._link.post_many(owner.channel, job, batch, timeout, self._abandoned):
                    made = [JobFuture(owner, slot, seq, job) for slot, seq in queued]
                    owner.register(made)
                    futures += made
                size = min(2 * size, MAP_BATCH)
                batch = list(itertools.islice(requests, size))
        except BaseException as exc:
            for future in futures:  # nothing of a map that failed to submit stays queued
                future.cancel()
            if isinstance(exc, FuturesTimeout):
                raise FuturesTimeout(f"map of {job!r} could not submit all its jobs by its timeout "
                                     f"({len(futures)} submitted, now cancelled)") from None
            raise
        finally:
            owner.end_submit(None)
        return futures

    def map(self, fn: Callable[..., Any] | str, *iterables: Iterable[Any], timeout: float | None = None,
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
        timeout = check_timeout(timeout)
        end = None if timeout is None else time.monotonic() + timeout
        job, flags = self._job_of(fn)
        job_timeout = check_job_timeout(job_timeout)
        sources = [_iterate(iterable, f"iterables[{i}]") for i, iterable in enumerate(iterables)]
        items: Iterator[Any]
        if chunksize > 1 and len(sources) == 1:
            # One iterable: a chunk is the items themselves (no argument list made per item).
            flags |= RequestFlags.CHUNK | RequestFlags.SINGLE
            items = _batched(sources[0], chunksize)
        elif chunksize > 1:
            flags |= RequestFlags.CHUNK
            items = ([list(args) for args in chunk] for chunk in _batched(zip(*sources), chunksize))
        else:
            items = zip(*sources)
        link = self._link
        requests = (link.encode(job, args, {}, flags=flags, job_timeout=job_timeout) for args in items)
        futures = self._submit_requests(job, requests, end)

        def results() -> Iterator[Any]:
            try:
                futures.reverse()  # popped in order, so a yielded result is not held here too
                while futures:
                    future = futures.pop()
                    try:
                        value = future.result(None if end is None else end - time.monotonic())
                    except BaseException:
                        future.cancel()  # the one waited for too (a timeout, Ctrl-C), as CPython's map
                        raise
                    if chunksize > 1:
                        yield from value
                    else:
                        yield value
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def imap_unordered(self, fn: Callable[..., Any] | str, iterable: Iterable[Any], *, buffer: int = IMAP_BUFFER,
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
        items = _iterate(iterable, "iterable")
        self._check_open()

        def results() -> Iterator[Any]:
            done: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
            in_flight: set[Future[Any]] = set()
            try:
                while True:
                    while len(in_flight) < buffer:
                        item = next(items, _END)
                        if item is _END:
                            break
                        submitted = self._submit_request(job, self._link.encode(job, (item,), {}, flags=flags,
                                                                                job_timeout=job_timeout), None)
                        in_flight.add(submitted)
                        submitted.add_done_callback(done.put)
                    if not in_flight:
                        return
                    owner = self._owner
                    if owner.in_owner_thread():
                        # A done-callback: nobody else reads the answers done.get() waits for.
                        # Drain the ring here while waiting for one of them, as result() does.
                        while done.empty():
                            owner.help(cast(JobFuture, next(iter(in_flight))), POLL)
                    finished = done.get()
                    in_flight.discard(finished)
                    yield finished.result()
            finally:
                for pending in in_flight:
                    pending.cancel()

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
        import asyncio  # already loaded where a loop runs; not in every client's start (~25 ms)
        loop = asyncio.get_running_loop()
        timeout = check_timeout(timeout)
        job, flags = self._job_of(fn)
        request = self._link.encode(job, args, kwargs, flags=flags, job_timeout=check_job_timeout(job_timeout))
        # A request with a spilled array is tried now only if a slot is free: a try that finds
        # none copies the array into shared memory for nothing (and frees it again).
        if not isinstance(request, Outgoing) or self._submit_may_answer():
            try:
                return asyncio.wrap_future(self._submit_request(job, request, ASYNC_SUBMIT_WAIT), loop=loop)
            except (FuturesTimeout, TimeoutError):
                pass
        return loop.create_task(self._submit_later(job, request, timeout))

    def _submit_may_answer(self) -> bool:
        """Whether a submit now would not just wait (JobBoard.submit_may_answer); ClientClosed,
        as a submit says it, if the client is not open.

        A retrying asubmit of a request with a spilled array tries only then (or every
        ASYNC_SPILLED_TRY_EVERY): each try copies the array into shared memory and frees it
        again if no slot takes the request, so retrying blind on a full board copied a 64 MB
        argument every 20 ms. Keeping one copy across the retries instead held the memory of
        every waiting asubmit (a burst of them filled the memory limit)."""
        owner = self._owner
        owner.begin_submit()  # the Link held: the board stays mapped while its words are read
        try:
            return owner.link.board.submit_may_answer()
        finally:
            owner.end_submit(None)

    async def _submit_later(self, job: str, request: Request, timeout: float | None) -> Any:
        import asyncio
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = ASYNC_SUBMIT_WAIT
        spilled = isinstance(request, Outgoing)
        tried, forced_every = time.monotonic(), ASYNC_SPILLED_TRY_EVERY
        while True:
            await asyncio.sleep(pause)
            try:
                if spilled and not self._submit_may_answer():
                    if time.monotonic() - tried < forced_every:
                        raise FuturesTimeout()
                    forced_every = min(2 * forced_every, ASYNC_SPILLED_TRY_MAX)
                tried = time.monotonic()
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
        import asyncio
        timeout = check_timeout(timeout)
        awaitable = self.asubmit(fn, *args, timeout=timeout, job_timeout=job_timeout, **kwargs)
        if timeout is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except asyncio.TimeoutError:
            raise FuturesTimeout(f"job {self._job_of(fn)[0]!r} did not finish within {timeout} s") from None

    def lookup(self, dimension_id: int, layer_id: int | str, *, timeout: float | None = None) -> LoadedContext:
        """Run the built-in ``lookup`` job; the result is a zero-copy view resolved here. A str
        ``layer_id`` is a layer key."""
        # Checked here, not only in the worker: a np.bool_ would not even encode, and a bad id
        # should not cost a round trip. Raises InvalidId (a TypeError).
        dimension_id, layer_id = as_id(dimension_id, "dimension_id"), as_id(layer_id, "layer_id")
        context: LoadedContext = self.call("lookup", dimension_id, _wire(layer_id), timeout=timeout)
        return context

    def load_contexts(self, path: NavigationPath | Iterable[StepLike], *, strict: bool = True,
                      timeout: float | None = None) -> ContextCollection:
        steps = [[d, _wire(lid)] for d, lid in NavigationPath.of(path)]
        contexts: ContextCollection = self.call("load_contexts", steps, strict=strict, timeout=timeout)
        return contexts

    # ----------------------------------------------------------------- synchronous calls

    def call(self, fn: Callable[..., Any] | str, /, *args: Any, timeout: float | None = None,
             job_timeout: float | None = None, **kwargs: Any) -> Any:
        """``submit(fn, ...).result(timeout)``, faster for a few threads: the calling thread waits
        on a channel of its own and reads the response itself, saving the hand-off through the
        completion thread (one wake-up and one GIL switch per job). Beyond DIRECT_CALLS_MAX
        concurrent calls, or when every channel is taken, it goes through ``submit``.
        ``timeout`` bounds the wait for a slot and for the result together.
        """
        timeout = check_timeout(timeout)
        job, flags = self._job_of(fn)
        job_timeout = check_job_timeout(job_timeout)
        self._owner.check_open()
        # With many threads waiting at once, each woken thread fights all others for the GIL and
        # the tail grows (128 threads: p99 30 -> 60 ms measured); the owner's batched delivery
        # is fairer there. So the direct path is for the few-threads case: the pool of at most
        # DIRECT_CALLS_MAX call() channels is the bound (a thread borrows one or none).
        deadline = None if timeout is None else time.monotonic() + timeout
        mine = self._direct.borrow(timeout)
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
        try:
            request = self._link.encode(job, args, kwargs, flags=flags, job_timeout=job_timeout)
            if mine is None:
                return self._call_submitted(job, request, timeout, deadline)
            return mine.call(self._link, job, request, timeout, self._spin, self._abandoned)
        finally:
            if mine is not None:
                self._direct.give_back(mine)

    def _call_submitted(self, job: str, request: Request, timeout: float | None, deadline: float | None) -> Any:
        """``call`` through ``submit`` (no direct channel for this thread), kept to the direct
        path's contract: ``deadline`` bounds the slot wait and the result together, and a
        request still queued when it passes is withdrawn (its answer would reach nobody)."""
        future = self._submit_request(job, request, timeout)
        try:
            return future.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except FuturesTimeout:
            future.cancel()  # a running job finishes; its result is dropped with the future
            raise FuturesTimeout(f"job {job!r} did not finish within {timeout} s") from None
        finally:
            del future  # no cycle through a raised error's traceback

    def _abandoned(self) -> bool:
        """Asked after every wait for a slot or for room: True once close() was called. In the
        completion thread (a done-callback submitting) it first delivers the answers waiting in
        the ring: their slots and spilled arguments are what the wait is for, and nobody else
        reads them while this thread waits."""
        owner = self._owner
        if owner.in_owner_thread():
            owner.deliver_waiting()
        return owner.close_requested

    # ----------------------------------------------------------------- lifetime

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no new jobs (ClientClosed), let the submitted ones finish, then detach.

        ``wait``: return once every job submitted through this client is done and the client is
        detached; otherwise return at once and detach in the background when they are.
        ``cancel_futures``: cancel the jobs no worker has taken yet first (running ones finish:
        a running job cannot be withdrawn). Idempotent; the context manager calls
        ``shutdown(wait=True)``, as ProcessPoolExecutor's does. Called from a done-callback (the
        owner's thread), it does not wait: the jobs it would wait for are settled there.
        In a child forked after the connect it releases nothing (the channel is the parent's).
        """
        owner = self._owner
        if self._link.inherited:
            return
        owner.shut_down()
        if cancel_futures:
            for future in owner.pending():
                future.cancel()
        if wait:
            owner.join()

    def close(self) -> None:
        """Detach now (idempotent): cancel what is still queued, fail what is running with
        ClientClosed (the job still runs; its result is dropped), release channels and reader.

        Unlike ``shutdown()`` it does not wait for running jobs. In a child forked after the
        connect it releases nothing (the channel is the parent's).
        """
        owner = self._owner
        if self._link.inherited:
            return
        owner.close()
        if not owner.join(CLOSE_WAIT) and not owner.in_owner_thread():
            # Inside a done-callback, or waiting on a stopped lock holder: the owner detaches
            # when it gets out; the dead-client sweep settles its channels if the process ends first.
            logger.warning("client of {!r} closed while its completion thread is busy; its channels are "
                           "released when it gets free or this process ends", self.name)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    @property
    def reader(self) -> Reader:
        """This client's own reader (lookups here need no worker)."""
        return self._link.reader

    @property
    def _futures(self) -> dict[int, JobFuture]:
        """Slot -> pending future, a copy (diagnostics and tests)."""
        return self._owner.table()

    @property
    def _lifecycle(self) -> Lifecycle:
        return self._owner.lifecycle


def connect(name: str, *, timeout: float | None = None, spin_us: float | None = None) -> Client:
    """Connect to the worker pool of running instance ``name`` (AttachError if there is none).

    ``timeout`` bounds the wait for the board's lock (LockTimeout naming its holder).
    ``spin_us``: the low-latency mode of :meth:`Client.call`, which busy-waits up to that many
    microseconds for the answer before sleeping (see shmpool.jobs.spin; off by default, and "auto"
    turns it on only with at least SPIN_MIN_CPUS cores).
    """
    try:
        return Client(name, timeout=timeout, spin_us=spin_us)
    except AttachError as exc:
        if _runs_no_workers(name):
            raise AttachError(name=name, reason="it runs no workers (its coordinator was started with "
                              "workers=0): start it with Coordinator(..., workers=N) or `shmpool serve "
                              "--workers N` to submit jobs; shmpool.attach reads its data without "
                              "workers") from exc
        raise


def _runs_no_workers(name: str) -> bool:
    """The instance is there (its control segment) but has no job board: a workers=0 coordinator."""
    def present(kind: str) -> bool:
        return shm_path(segment_name(name, kind)).exists()
    return present(CONTROL) and not present(JOBS)


def _wire(layer_id: int) -> int | str:
    """A layer id as a job sends it: a key as its text, so that the worker's lookup compares it
    (a LayerKey would travel as its bare key id, which finds a colliding key's layer)."""
    return layer_id.text if type(layer_id) is LayerKey else layer_id
