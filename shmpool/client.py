"""Submitting jobs to a coordinator's worker pool from any process: ``shmpool.connect(name)``.

The API is concurrent.futures': ``submit`` returns a Future, ``map`` keeps order, ``close`` (or
the context manager) ends it. One Client may be shared by many threads. A completion thread per
client drains the client's completion ring and resolves futures; layer results arrive as
references and are resolved against this process's own mapping, so they cost no copy and keep
their generation pinned while held.
"""

from __future__ import annotations

import threading
import time
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, Iterable, Iterator

import posix_ipc
from loguru import logger

from ._proc import is_alive
from .codec import decode_error, decode_result, encode_request
from .context import ContextCollection, LoadedContext, NavigationPath, Step
from .errors import AttachError, RequestTooLarge, ShmPoolError
from .ids import as_id
from .jobboard import JobBoard
from .jobs_layout import Status
from .layout import W
from .lock import interrupted_waits_retry
from .reader import Reader, attach
from .spin import spin_seconds

__all__ = ["Client", "connect", "JobFuture"]

POLL = 0.1  # seconds between coordinator liveness checks while idle
DIRECT_CALLS_MAX = 4  # concurrent call()s per client that wait on their own channel
SPENT_IDLE = 0.05  # seconds a call() thread may keep its last answer's slot before it is freed
CANCEL_WAIT = 0.05  # seconds a timed-out call() gives the lock to withdraw its request


class JobFuture(Future):
    """A Future whose ``cancel()`` also withdraws the request while no worker has taken it."""

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


class _ThreadChannel:
    """One thread's own channel for Client.call; released when the thread (and this) is gone.

    ``spent`` is the slot of the thread's last answer, still DELIVERED: the next call frees it
    in the lock round of its own submit (saving one lock round per call), or the completion
    thread frees it once the thread has been idle for SPENT_IDLE.
    """
    __slots__ = ("channel", "sem", "stale", "spent", "spent_at", "guard", "__weakref__")

    def __init__(self, channel: int, sem) -> None:
        self.channel, self.sem, self.stale = channel, sem, set()
        self.spent: tuple[int, int] | None = None
        self.spent_at = 0.0
        self.guard = threading.Lock()

    def take_spent(self) -> tuple[int, int] | None:
        with self.guard:
            slot, self.spent = self.spent, None
        return slot


def _release_thread_channel(client_ref, channel: int) -> None:
    client = client_ref()
    if client is not None:
        client._release_thread_channel(channel)


class Client:
    """A connection to the worker pool of running instance ``name``. Thread-safe."""

    def __init__(self, name: str, *, timeout: float | None = None, spin_us: float | None = None) -> None:
        self.name = name
        self._spin = spin_seconds(spin_us)
        self._reader: Reader = attach(name)
        try:
            self._board = JobBoard.attach(name)
            self._channel = self._board.claim_channel(timeout=timeout)
        except BaseException:
            if getattr(self, "_board", None) is not None:
                self._board.close()
            self._reader.close()
            raise
        self._inst = self._reader._inst
        self._sem = self._board.channel_sem(self._channel)
        self._futures: dict[int, tuple[int, JobFuture]] = {}
        self._early: set[int] = set()
        self._tls = threading.local()        # per-thread channel of call()
        self._direct_calls = 0
        self._thread_channels: list[int] = []
        self._lock = threading.Lock()
        self._deferred: list[tuple[int, int]] = []  # answers (slot, seq) a call() could not free in time
        self._thread_channel_objs: "weakref.WeakSet[_ThreadChannel]" = weakref.WeakSet()
        self._next_spent_sweep = 0.0
        self._closed = False
        self._broken: BaseException | None = None
        self._thread = threading.Thread(target=self._complete_loop, name=f"shmpool-client-{name}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- submitting

    def submit(self, job: str, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> JobFuture:
        """Queue ``job(reader, *args, **kwargs)`` on a worker; returns a Future.

        Blocks while every slot is busy (back-pressure), for at most ``timeout`` seconds, then
        raises TimeoutError. ``timeout`` is therefore reserved and not passed to the job.
        """
        if self._broken is not None:
            raise self._broken
        if self._closed:
            raise AttachError(name=self.name, reason="this client is closed")
        request = encode_request(job, args, kwargs)
        try:
            slot, seq = self._board.submit(self._channel, request, timeout=timeout, alive=self._coordinator_alive)
        except posix_ipc.BusyError:
            raise FuturesTimeout(f"no free job slot on {self.name!r} within {timeout} s "
                                 f"({self._board.v.layout.slots} slots, all busy)") from None
        except RequestTooLarge as exc:
            raise RequestTooLarge(nbytes=exc.nbytes, capacity=exc.capacity, job=job) from None
        future = JobFuture(self._board, slot, seq, job, self._forget)
        with self._lock:
            self._futures[slot] = (seq, future)
            early = slot in self._early
            self._early.discard(slot)
        if early:
            self._deliver(slot)
        return future

    def map(self, job: str, *iterables: Iterable, timeout: float | None = None) -> Iterator[Any]:
        """Like Executor.map: results in order; ``timeout`` bounds the whole iteration."""
        deadline = None if timeout is None else time.monotonic() + timeout
        futures = [self.submit(job, *args, timeout=timeout) for args in zip(*iterables)]

        def results():
            try:
                for fut in futures:
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    yield fut.result(remaining)
            finally:
                for fut in futures:
                    fut.cancel()

        return results()

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
                handle = self._inst.table.handle_at(spill[0], spill[1], spill[2], spill[3], spill[4])
                data = self._inst.handle_view(handle)
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
                self._free_spill(handle)

    def _free_spill(self, handle) -> None:
        try:
            self._inst.table.free(handle)
        except ShmPoolError as exc:
            logger.debug("spilled result {} already reclaimed: {}", handle, exc)

    # ----------------------------------------------------------------- synchronous calls

    def call(self, job: str, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """``submit(job, ...).result(timeout)``, faster for a few threads: the calling thread waits
        on a channel of its own and reads the response itself, saving the hand-off through the
        completion thread (one wake-up and one GIL switch per job). Beyond DIRECT_CALLS_MAX
        concurrent calls, or when every channel is taken, it goes through ``submit``.
        ``timeout`` bounds the wait for a slot and for the result together.
        """
        if self._broken is not None:
            raise self._broken
        if self._closed:
            raise AttachError(name=self.name, reason="this client is closed")
        # With many threads waiting at once, each woken thread fights all others for the GIL and
        # the tail grows (128 threads: p99 30 -> 60 ms measured); the completion thread's batched
        # delivery is fairer there. So the direct path is for the few-threads case.
        with self._lock:
            direct = self._direct_calls < DIRECT_CALLS_MAX
            if direct:
                self._direct_calls += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            mine = self._thread_channel(timeout) if direct else None
        except BaseException:
            with self._lock:
                self._direct_calls -= 1
            raise
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
        if mine is None:
            if direct:
                with self._lock:
                    self._direct_calls -= 1
            return self.submit(job, *args, timeout=timeout, **kwargs).result(timeout)
        try:
            return self._call_direct(mine, job, args, kwargs, timeout)
        finally:
            with self._lock:
                self._direct_calls -= 1

    def _call_direct(self, mine: "_ThreadChannel", job: str, args, kwargs, timeout: float | None) -> Any:
        channel, sem, stale = mine.channel, mine.sem, mine.stale
        request = encode_request(job, args, kwargs)
        deadline = None if timeout is None else time.monotonic() + timeout
        if len(request) > self._board.v.layout.payload:  # before the spent slot leaves our hands
            raise RequestTooLarge(nbytes=len(request), capacity=self._board.v.layout.payload, job=job)
        spent = mine.take_spent()
        try:
            slot, seq = self._board.submit(channel, request, timeout=timeout, release=spent,
                                           alive=self._coordinator_alive)
        except BaseException as exc:
            if spent is not None:  # freed already if submit got as far as its first lock round:
                with self._lock:   # a second release of the same (slot, seq) is a no-op
                    self._deferred.append(spent)
            if isinstance(exc, posix_ipc.BusyError):
                raise FuturesTimeout(f"no free job slot on {self.name!r} within {timeout} s") from None
            if isinstance(exc, RequestTooLarge):
                raise RequestTooLarge(nbytes=exc.nbytes, capacity=exc.capacity, job=job) from None
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
        """Free the last answer slots of call() threads idle for SPENT_IDLE (completion thread)."""
        now = time.monotonic()
        self._next_spent_sweep = now + SPENT_IDLE
        with self._lock:
            channels = list(self._thread_channel_objs)
        idle = []
        for mine in channels:
            with mine.guard:
                if mine.spent is not None and now - mine.spent_at >= SPENT_IDLE:
                    idle.append(mine.spent)
                    mine.spent = None
        if idle:
            try:
                self._board.release_slots(idle, timeout=SPENT_IDLE)
            except TimeoutError:
                with self._lock:
                    self._deferred.extend(idle)

    def _drop_stale(self, slots: list[int], stale: set[int], deadline: float | None = None) -> None:
        """Responses to calls that timed out: free their spills and slots."""
        for slot in slots:
            stale.discard(slot)
            _seq, _status, data, spill = self._board.response(slot)
            if data is not None:
                data.release()
            if spill is not None:
                self._free_spill(self._inst.table.handle_at(*spill))
        pairs = [(slot, self._board.slot_seq(slot)) for slot in slots]
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._board.release_slots(pairs, timeout=remaining)
        except TimeoutError:
            with self._lock:
                self._deferred.extend(pairs)

    def _thread_channel(self, timeout: float | None = None):
        mine = getattr(self._tls, "channel", None)
        if mine is None:
            try:
                channel = self._board.claim_channel(timeout=timeout)
            except AttachError:
                return None  # every channel is taken: the shared one still works
            mine = _ThreadChannel(channel, self._board.channel_sem(channel))
            # When the thread ends, its thread-local goes and the channel (with any late
            # response still in it) goes back to the board: exited threads hold nothing.
            weakref.finalize(mine, _release_thread_channel, weakref.ref(self), channel)
            self._tls.channel = mine
            with self._lock:
                self._thread_channels.append(channel)
                self._thread_channel_objs.add(mine)
        return mine

    def _release_thread_channel(self, channel: int) -> None:
        with self._lock:
            if self._closed or channel not in self._thread_channels:
                return  # close() releases it
            self._thread_channels.remove(channel)
        try:
            spills = self._board.release_channel(channel)
        except ShmPoolError as exc:
            logger.debug("channel {} not released: {}", channel, exc)
            return
        for spill in spills:
            self._free_spill(self._inst.table.handle_at(*spill))

    def _resolve(self, dimension_id: int, layer_id: int, generation: int) -> LoadedContext:
        # The worker saw `generation`; this process maps the newest published one, which is the
        # same or later. Either way the bytes are whole and stay pinned while the context lives.
        return self._reader.load_layer_context(dimension_id, layer_id)

    def _coordinator_alive(self) -> bool:
        words = self._inst.control.words
        return int(words[W.STATE]) == 1 and is_alive(int(words[W.COORDINATOR_PID]),
                                                     int(words[W.COORDINATOR_START]))

    def _gone(self) -> AttachError:
        stopping = int(self._inst.control.words[W.STATE]) != 1
        return AttachError(name=self.name, reason="the coordinator stopped before answering" if stopping
                           else "the coordinator is gone")

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

    def close(self) -> None:
        """Cancel what is still queued, fail the rest with AttachError, and detach (idempotent)."""
        if self._closed:
            return
        with self._lock:
            pending = list(self._futures.values())
        for _seq, future in pending:
            future.cancel()
        self._closed = True
        self._thread.join(2 * POLL + 1)
        self._fail_all(AttachError(name=self.name, reason="the client was closed"))
        if self._thread.is_alive():
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
        for channel in self._thread_channels:
            try:
                spills += self._board.release_channel(channel)
            except ShmPoolError as exc:
                logger.debug("channel {} not released: {}", channel, exc)
        for spill in spills:  # results that arrived after their reader stopped waiting
            self._free_spill(self._inst.table.handle_at(*spill))
        self._board.close()
        self._reader.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def reader(self) -> Reader:
        """This client's own reader (lookups here need no worker)."""
        return self._reader


def connect(name: str, *, timeout: float | None = None, spin_us: float | None = None) -> Client:
    """Connect to the worker pool of running instance ``name`` (AttachError if there is none).

    ``timeout`` bounds the wait for the board's lock (LockTimeout naming its holder).
    ``spin_us``: the low-latency mode of :meth:`Client.call`, which busy-waits up to that many
    microseconds for the answer before sleeping (see shmpool.spin; off by default, and "auto"
    turns it on only with at least SPIN_MIN_CPUS cores).
    """
    return Client(name, timeout=timeout, spin_us=spin_us)
