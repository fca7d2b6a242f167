"""What a Client holds of its instance, shared by its three parts (shmpool/jobs/client.py): the
reader, the job board, how an answer in a slot becomes an :class:`Outcome`, and :func:`settle`,
the one function that gives a future its outcome.

Lifetime: the Link is closed (board unmapped, reader detached) by the last of its users to let
go: the completion owner when it detaches, or a ``call()`` still running on a borrowed channel
then. So no thread ever reads a board another thread unmapped under it.

Fork: a Link belongs to the process that connected. ``os.register_at_fork`` marks every live
Link *inherited* in a forked child; the Client there refuses every use with ClientClosed (connect
again in the child), and closing or dropping it touches nothing shared: the channels, the slots
and the reader row are the parent's, and the parent keeps them. The mark is one attribute store
taken without a lock, because a lock copied into the child mid-use is never released there.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, Callable, Iterator, NamedTuple, Union

import numpy as np
import posix_ipc
from ..substrate._log import logger

from ..data.context import LoadedContext
from ..data.reader import Reader, attach
from ..errors import ArgumentTooLarge, AttachError, ClientClosed, RequestTooLarge, ShmPoolError
from ..substrate import _faults
from ..substrate.alloc import Handle
from ..substrate.instance import SharedInstance
from .arg_spill import ArgumentsLeft, ArgumentsRef, adopt_arguments, free_arguments, spill_over, write_arguments
from .codec import ArgumentPlan, Decoder, RequestFlags, decode_error, decoder, encode_spilling
from .jobboard import JobBoard
from .jobs_layout import SC, SlotState, Status
from .spill import SpillRef, free_spill, open_spill

__all__ = ["Link", "Outcome", "Outgoing", "Request", "QuietFuture", "settle"]

ARGUMENT_ROOM_WAIT = 0.05  # seconds between tries to place spilled arguments while ours fill the limit


class Outgoing(NamedTuple):
    """A request whose array arguments spilled, as this client encoded it: its bytes (for the
    slot) and the plan listing the arrays (copied into shared memory by :meth:`Link.post`);
    ``args`` and ``kwargs`` only to name an argument the allocation table refuses."""
    data: bytes
    plan: ArgumentPlan
    args: Any
    kwargs: Any


# What crosses from a Client to its Link: the request's bytes, or an Outgoing when arrays spilled
# (most requests are plain bytes: no record is made for them, ~1 us a submit measured).
Request = Union[bytes, Outgoing]


class Outcome(NamedTuple):
    """A job's answer as decoded in this process: ``error`` set means it failed (``value`` None)."""
    value: Any
    error: BaseException | None


_PENDING, _FINISHED = concurrent.futures._base.PENDING, concurrent.futures._base.FINISHED
_DONE = (concurrent.futures._base.CANCELLED, concurrent.futures._base.CANCELLED_AND_NOTIFIED, _FINISHED)
_MAKING = threading.Lock()  # makes a QuietFuture's condition, so that two threads never make two


class QuietFuture(Future):  # type: ignore[type-arg]
    """A Future that makes its Condition only when someone looks (a waiter, a callback, wait()).

    A pipelined client makes one future a job and usually finds it done when it asks: making,
    taking and notifying a Condition nobody waits on was ~2 us of the ~8 us a submit cost the
    client's thread (measured). Every reader of ``_condition`` gets it through
    :meth:`__getattr__` under ``_MAKING``; :func:`settle` finishes a future that has none under
    the same lock, so a waiter either made its condition first (and is notified the usual way)
    or makes it afterwards and finds the future finished."""

    def __init__(self) -> None:  # Future.__init__ without its Condition
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        if name != "_condition":
            raise AttributeError(name)
        with _MAKING:
            made = self.__dict__.get("_condition")
            if made is None:
                made = self.__dict__["_condition"] = threading.Condition()
        return made

    def done(self) -> bool:
        return self._state in _DONE  # one read of one attribute: no lock needed

    def result(self, timeout: float | None = None) -> Any:
        if self._state == _FINISHED and self._exception is None:
            return self._result
        try:
            return super().result(timeout)
        finally:
            self = None  # type: ignore[assignment]  # noqa: PLW0642  # no cycle through the error's traceback

    def _finish_unwatched(self, outcome: "Outcome") -> bool:
        """Finish without a Condition if none was made yet (then no waiter nor callback exists);
        False if one was, or the future is no longer pending: :func:`settle`'s usual path then."""
        with _MAKING:
            if "_condition" in self.__dict__ or self._state != _PENDING:
                return False
            if outcome.error is not None:
                self._exception = outcome.error
            else:
                self._result = outcome.value
            self._state = _FINISHED
        return True


def settle(future: "Future[Any]", outcome: Outcome) -> None:
    """Give ``future`` its outcome: the one place that does, for every path a result takes.

    A future cancelled meanwhile stays cancelled (its waiters are told). The caller must be the
    future's one owner: whoever took it out of its channel's table, or the call() that made it."""
    if isinstance(future, QuietFuture) and future._finish_unwatched(outcome):
        return
    if not future.set_running_or_notify_cancel():
        return
    if outcome.error is not None:
        future.set_exception(outcome.error)
    else:
        future.set_result(outcome.value)


_OK = int(Status.OK)
_links: "weakref.WeakSet[Link]" = weakref.WeakSet()
# Inherited Links, held for the child's whole life: collecting one would run its Reader's
# finalizer there, and that would release the reader row and pins of the parent.
_kept_in_child: list[Link] = []


def _after_fork_in_child() -> None:
    global _MAKING
    # Made afresh: the completion thread takes it for every future it settles, and one copied
    # held (a fork mid-settle) would never be released here, hanging the child's first wait on
    # a future of its own new Client whatever its timeout.
    _MAKING = threading.Lock()
    for link in list(_links):
        link.inherited = True
        _kept_in_child.append(link)


os.register_at_fork(after_in_child=_after_fork_in_child)


class Link:
    """One process's attachment to instance ``name`` for a Client: reader, board, liveness.

    Created held once (by the completion owner); :meth:`hold` / :meth:`drop` count further users,
    and the last drop closes it. In a child forked after it was made it is ``inherited`` and
    closing it does nothing: what it maps and names is the parent's."""

    def __init__(self, name: str, *, timeout: float | None = None) -> None:
        self.name = name
        self.pid = os.getpid()
        self.inherited = False
        self.reader: Reader = attach(name, timeout=timeout)  # a stopped lock holder: LockTimeout, not a hang
        try:
            self.board = JobBoard.attach(name)
        except BaseException:
            self.reader.close()
            raise
        self.inst: SharedInstance = self.reader.instance
        self._payload = self.board.payload
        self._spill_over = spill_over(self._payload)  # array arguments above it spill (arg_spill.py)
        self._decode: Decoder = decoder(self._resolve)  # made once: a closure per answer costs
        self._users = 1
        self._users_lock = threading.Lock()
        _links.add(self)

    # ----------------------------------------------------------------- fork

    def check_process(self) -> None:
        """ClientClosed if this Link was inherited through fork(); cheap enough for every call."""
        if self.inherited:
            raise ClientClosed(name=self.name, reason=(
                f"it was inherited through fork() from process {self.pid}; call shmpool.connect() again in "
                f"this process ({os.getpid()})"))

    # ----------------------------------------------------------------- lifetime

    def hold(self) -> bool:
        """Count one more user; False (nothing counted) once the Link is closed."""
        with self._users_lock:
            if self._users == 0:
                return False
            self._users += 1
            return True

    def drop(self) -> None:
        """Let go; the last user closes the board and the reader (never in an inherited copy)."""
        with self._users_lock:
            self._users -= 1
            last = self._users == 0
        if last and not self.inherited:
            self.board.close()
            self.reader.close()

    # ----------------------------------------------------------------- the board, as this API

    def encode(self, job: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], *,
               flags: RequestFlags = RequestFlags.NAMED, job_timeout: float | None = None) -> Request:
        """Encode a request for this board: array arguments above a quarter of a slot spill
        (shmpool/jobs/arg_spill.py), and every non-empty one if the request still does not fit."""
        data, plan = encode_spilling(job, args, kwargs, self._spill_over, flags=flags, job_timeout=job_timeout)
        if len(data) > self._payload and self._spill_over > 0:
            data, plan = encode_spilling(job, args, kwargs, 0, flags=flags, job_timeout=job_timeout)
        return data if plan is None else Outgoing(data, plan, args, kwargs)

    def _place(self, job: str, request: Outgoing, timeout: float | None,
               abandoned: Callable[[], bool] | None = None, unless_channel: int = -1) -> Handle:
        """Copy a request's spilled arrays into shared memory (their one copy); ArgumentTooLarge
        if the table refuses. While this client's own spilled arguments fill the table, wait (at
        most ``timeout``) for its jobs to end and free theirs: ``map`` over many large arrays
        is back-pressured by memory as by slots, instead of failing half-way. A wait that runs
        out raises TimeoutError (the table's refusal as its cause), as a wait for a slot does,
        and no sleep outlasts what is left of ``timeout``: asubmit passes ASYNC_SUBMIT_WAIT (1 ms)
        and retries from its loop, which a 50 ms sleep here blocked. Jobs of ``unless_channel``
        (a call()'s own channel) are no room to wait for: only the caller, waiting here, frees
        what they hold (its last answer's slot, a timed-out call's late answer)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return write_arguments(self.inst, request.plan, job, request.args, request.kwargs or {})
            except ArgumentTooLarge as refused:
                if not self._spilled_outstanding(unless_channel) \
                        or request.plan.nbytes > self.inst.table.stats().memory_limit \
                        or not self.coordinator_alive():
                    raise
                pause = ARGUMENT_ROOM_WAIT if deadline is None else min(ARGUMENT_ROOM_WAIT, deadline - time.monotonic())
                if not pause > 0:  # also a NaN deadline: never a wait without end
                    raise FuturesTimeout(f"no room in shared memory for the {request.plan.nbytes} bytes of {job!r}'s "
                                         f"spilled arguments within {timeout} s (this client's queued jobs "
                                         f"hold the memory limit)") from refused
                if abandoned is not None and abandoned():
                    raise ClientClosed(name=self.name, reason="close() was called while it waited for room "
                                                              "for its spilled arguments") from refused
            time.sleep(pause)

    def _spilled_outstanding(self, unless_channel: int = -1) -> bool:
        """True while jobs of this process hold spilled arguments (their end frees room), not
        counting those of channel ``unless_channel``."""
        pid = os.getpid()
        rows = self.board.v.slots
        mine = (rows[:, SC.CLIENT_PID] == pid) & (rows[:, SC.ARG_RECORD] >= 0) & (
            rows[:, SC.CHANNEL] != unless_channel) & np.isin(
            rows[:, SC.STATE], (SlotState.SUBMITTED, SlotState.RUNNING, SlotState.DONE, SlotState.DELIVERED))
        return bool(mine.any())

    def post(self, channel: int, job: str, request: Request, timeout: float | None,
             release: tuple[int, int] | None = None, abandoned: Callable[[], bool] | None = None,
             direct: bool = False) -> tuple[int, int]:
        """Put ``request`` on the board for ``channel``: (slot, seq). The one place where the
        board's refusals become this API's: TimeoutError for no slot, RequestTooLarge naming the job.
        ``release``: a delivered (slot, seq) of the caller's to free in the same lock round.
        Spilled arguments are placed first (:meth:`_place`), and freed again if the submit fails.
        ``abandoned()`` True (the client was closed) ends a wait for a slot or room: ClientClosed.
        ``direct``: ``channel`` is a call()'s own, whose jobs free no room while it posts."""
        if isinstance(request, Outgoing):
            began = time.monotonic()
            handle: Handle | None = self._place(job, request, timeout, abandoned, channel if direct else -1)
            data = request.data
            if timeout is not None:  # one timeout for the room and the slot together
                timeout = max(0.0, timeout - (time.monotonic() - began))
        else:
            handle, data = None, request
        try:
            if _faults.ARMED:
                _faults.point("arguments.placed")  # placed (lent), not on the board: the coordinator frees them
            return self.board.submit(channel, data, timeout=timeout, release=release,
                                     alive=self.coordinator_alive, abandoned=abandoned,
                                     arguments=None if handle is None else ArgumentsRef(handle.record, handle.serial))
        except BaseException as exc:
            if handle is not None:
                free_arguments(self.inst, handle)
            if isinstance(exc, posix_ipc.BusyError):
                raise FuturesTimeout(f"no free job slot on {self.name!r} within {timeout} s "
                                     f"({self.board.slot_count} slots, all busy)") from None
            if isinstance(exc, RequestTooLarge) and not exc.job:
                raise RequestTooLarge(nbytes=len(data), capacity=self.board.payload, job=job) from None
            raise

    def post_many(self, channel: int, job: str, requests: list[Request], timeout: float | None,
                  abandoned: Callable[[], bool] | None = None) -> Iterator[list[tuple[int, int]]]:
        """:meth:`post` for a batch (``map``): yields the (slot, seq) of each run queued, in order.
        A batch with spilled arguments is posted one request at a time, each placed just before
        its submit, so that the arguments of requests still waiting for a slot hold no memory."""
        if any(isinstance(request, Outgoing) for request in requests):
            deadline = None if timeout is None else time.monotonic() + timeout
            for request in requests:
                yield [self.post(channel, job, request,
                                 None if deadline is None else max(0.0, deadline - time.monotonic()),
                                 abandoned=abandoned)]
            return
        try:
            plain: list[bytes] = requests  # type: ignore[assignment]  # no Outgoing among them (above)
            yield from self.board.submit_many(channel, plain, timeout=timeout, alive=self.coordinator_alive,
                                              abandoned=abandoned)
        except posix_ipc.BusyError:
            raise FuturesTimeout(f"no free job slot on {self.name!r} within {timeout} s "
                                 f"({self.board.slot_count} slots, all busy)") from None
        except RequestTooLarge as exc:
            raise RequestTooLarge(nbytes=exc.nbytes, capacity=exc.capacity, job=job) from None

    def withdraw(self, slot: int, seq: int, *, timeout: float = 1.0) -> bool:
        """Withdraw a request no worker has taken yet (JobBoard.cancel) and free its spilled
        arguments; False if it runs or ran (its answer frees them), or the lock is wedged."""
        arguments = self.board.arguments(slot)  # read first: once withdrawn, the slot may be reused
        if not self.board.cancel(slot, seq, timeout=timeout):
            return False
        if arguments is not None:
            free_arguments(self.inst, arguments)
        return True

    def _free_arguments_of(self, slot: int, seq: int) -> None:
        """Free the spilled arguments of request ``seq``, whose answer was delivered to us in
        ``slot`` (the slot is ours until released, so its row still names them), unless its
        worker kept them (a view its job holds on to: that worker frees them, arg_spill.py)."""
        board = self.board
        arguments = board.answer_arguments(slot)
        if arguments is not None and board.slot_seq(slot) == seq:
            free_arguments(self.inst, arguments)

    def outcome(self, slot: int, seq: int, job: str) -> Outcome:
        """The decoded answer (or the exception to raise) in a finished slot; frees its spill and
        its request's spilled arguments. The slot itself stays DELIVERED: freeing it is its
        reader's next step."""
        try:
            return self._outcome(slot, seq, job)
        finally:
            self._free_arguments_of(slot, seq)

    def _outcome(self, slot: int, seq: int, job: str) -> Outcome:
        try:
            got_seq, status, data = self.board.core.answer(slot)  # a copy; None if it spilled
            if data is None:
                return self._spilled_outcome(slot, seq, job)
            if got_seq != seq:
                return Outcome(None, AttachError(name=self.name, reason=f"job slot {slot} was reused under us"))
            if status == _OK:
                return Outcome(self._decode(data), None)
            return Outcome(None, decode_error(data, job))
        except BaseException as exc:  # a bad response must fail its caller, not the client
            return Outcome(None, exc)

    def _spilled_outcome(self, slot: int, seq: int, job: str) -> Outcome:
        got_seq, status, data, spill = self.board.response(slot)
        handle = None
        try:
            if spill is not None:
                handle, data = open_spill(self.inst, spill)
            assert data is not None, "JobBoard.response gives the slot's view when there is no spill"
            if got_seq != seq:
                return Outcome(None, AttachError(name=self.name, reason=f"job slot {slot} was reused under us"))
            if status == Status.OK:
                return Outcome(self._decode(data), None)
            return Outcome(None, decode_error(data, job))
        except BaseException as exc:  # a bad response must fail its caller, not the client
            return Outcome(None, exc)
        finally:
            if isinstance(data, memoryview):
                data.release()
            if handle is not None:
                free_spill(self.inst, handle)

    def discard_answer(self, slot: int) -> None:
        """Free what an answer nobody waits for holds besides its slot (spills of both ways)."""
        response = self.board.response(slot)
        self._free_arguments_of(slot, response.seq)
        if response.data is not None:
            response.data.release()
        if response.spill is not None:
            free_spill(self.inst, response.spill)

    def release_channel(self, channel: int) -> None:
        """Give ``channel`` back to the board, freeing the spills of answers nobody read and the
        spilled arguments of its unfinished jobs (those still running go to the coordinator)."""
        left = ArgumentsLeft()
        try:
            spills: list[SpillRef] = self.board.release_channel(channel, left)
        except ShmPoolError as exc:
            logger.debug("channel {} not released: {}", channel, exc)
            return
        for spill in spills:  # results that arrived after their reader stopped waiting
            free_spill(self.inst, spill)
        for arguments in left.ended:
            free_arguments(self.inst, arguments)
        if left.orphaned:  # their workers read them still: our exit must not reclaim them
            me = self.board.identity()
            for arguments in left.orphaned:
                adopt_arguments(self.inst, arguments, me)

    def _resolve(self, dimension_id: int, layer_id: int, generation: int) -> LoadedContext:
        # The worker saw `generation`; this process maps the newest published one, which is the
        # same or later. Either way the bytes are whole and stay pinned while the context lives.
        return self.reader.load_layer_context(dimension_id, layer_id)

    # ----------------------------------------------------------------- the coordinator

    def coordinator_alive(self) -> bool:
        return self.inst.coordinator_alive()

    def gone(self) -> AttachError:
        return AttachError(name=self.name, reason="the coordinator is gone" if self.inst.is_running()
                           else "the coordinator stopped before answering")
