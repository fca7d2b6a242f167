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

import os
import threading
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, NamedTuple

import posix_ipc
from loguru import logger

from ..data.context import LoadedContext
from ..data.reader import Reader, attach
from ..errors import AttachError, ClientClosed, RequestTooLarge, ShmPoolError
from ..substrate.instance import SharedInstance
from .codec import decode_error, decode_result
from .jobboard import JobBoard
from .jobs_layout import Status
from .spill import SpillRef, free_spill, open_spill

__all__ = ["Link", "Outcome", "settle"]


class Outcome(NamedTuple):
    """A job's answer as decoded in this process: ``error`` set means it failed (``value`` None)."""
    value: Any
    error: BaseException | None


def settle(future: "Future[Any]", outcome: Outcome) -> None:
    """Give ``future`` its outcome: the one place that does, for every path a result takes.

    A future cancelled meanwhile stays cancelled (its waiters are told). The caller must be the
    future's one owner: whoever took it out of its channel's table, or the call() that made it."""
    if not future.set_running_or_notify_cancel():
        return
    if outcome.error is not None:
        future.set_exception(outcome.error)
    else:
        future.set_result(outcome.value)


_links: "weakref.WeakSet[Link]" = weakref.WeakSet()
# Inherited Links, held for the child's whole life: collecting one would run its Reader's
# finalizer there, and that would release the reader row and pins of the parent.
_kept_in_child: list[Link] = []


def _after_fork_in_child() -> None:
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

    def post(self, channel: int, job: str, request: bytes, timeout: float | None,
             release: tuple[int, int] | None = None) -> tuple[int, int]:
        """Put ``request`` on the board for ``channel``: (slot, seq). The one place where the
        board's refusals become this API's: TimeoutError for no slot, RequestTooLarge naming the job.
        ``release``: a delivered (slot, seq) of the caller's to free in the same lock round."""
        if len(request) > self.board.payload:
            raise RequestTooLarge(nbytes=len(request), capacity=self.board.payload, job=job)
        try:
            return self.board.submit(channel, request, timeout=timeout, release=release,
                                     alive=self.coordinator_alive)
        except posix_ipc.BusyError:
            raise FuturesTimeout(f"no free job slot on {self.name!r} within {timeout} s "
                                 f"({self.board.slot_count} slots, all busy)") from None

    def outcome(self, slot: int, seq: int, job: str) -> Outcome:
        """The decoded answer (or the exception to raise) in a finished slot; frees its spill.
        The slot itself stays DELIVERED: freeing it is its reader's next step."""
        got_seq, status, data, spill = self.board.response(slot)
        handle = None
        try:
            if spill is not None:
                handle, data = open_spill(self.inst, spill)
            assert data is not None, "JobBoard.response gives the slot's view when there is no spill"
            if got_seq != seq:
                return Outcome(None, AttachError(name=self.name, reason=f"job slot {slot} was reused under us"))
            if status == Status.OK:
                return Outcome(decode_result(data, self._resolve), None)
            return Outcome(None, decode_error(data, job))
        except BaseException as exc:  # a bad response must fail its caller, not the client
            return Outcome(None, exc)
        finally:
            if isinstance(data, memoryview):
                data.release()
            if handle is not None:
                free_spill(self.inst, handle)

    def discard_answer(self, slot: int) -> None:
        """Free what an answer nobody waits for holds besides its slot (a spill)."""
        response = self.board.response(slot)
        if response.data is not None:
            response.data.release()
        if response.spill is not None:
            free_spill(self.inst, response.spill)

    def release_channel(self, channel: int) -> None:
        """Give ``channel`` back to the board, freeing the spills of answers nobody read."""
        try:
            spills: list[SpillRef] = self.board.release_channel(channel)
        except ShmPoolError as exc:
            logger.debug("channel {} not released: {}", channel, exc)
            return
        for spill in spills:  # results that arrived after their reader stopped waiting
            free_spill(self.inst, spill)

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
