"""Generation wake-ups: ``reader.wait_generation`` sleeps until the coordinator posts a publish.

One semaphore per reader row, ``/shmpool.NAME.gw<slot>``, created 0600 by the first process of
that row that waits (or opened after the trust check, shmpool/substrate/trust.py, when an earlier holder
of the row left it), never unlinked before the coordinator's stop (its sweep removes every name
of the instance; ``shmpool.cleanup`` too). In the reader process one dispatcher thread per
Reader sleeps on it for every waiting thread and coroutine, so a call costs no thread.

The protocol, between the row's RD.WAITING word and W.PIN_EPOCH (bumped by every publication):

    reader:       RD.WAITING = PIN_EPOCH + 1 (armed), then every waiter re-checks its
                  GENERATION word, then sem_wait (in slices of SLICE seconds)
    coordinator:  GENERATION stores, PIN_EPOCH + 1, then post every row whose WAITING != 0;
                  each reaper round (20 ms apart for at least 0.1 s after a publication, and
                  while it finds any) posts again every row whose WAITING - 1 < PIN_EPOCH

The arm-then-check on one side and store-then-read on the other is Dekker's pattern, which
store-to-load reordering can defeat for a few nanoseconds: both sides may miss each other. The
reaper's re-post covers that (a row armed before the last publication and not re-armed since
has not been woken), so a wake-up is late by at most one reaper round, never lost. The slices
let the dispatcher see a dead or stopping coordinator (AttachError to every waiter) and its own
Reader's close.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, TypeVar

import numpy as np
import posix_ipc
from ..substrate._log import logger

from ..substrate._proc import is_alive
from ..errors import AttachError, GenerationTimeout, ShmPoolError
from ..substrate.layout import RD, STATE_RUNNING, W, Control
from ..substrate.names import semaphore_name
from ..substrate.trust import open_semaphore

if TYPE_CHECKING:
    import asyncio
    from ..substrate.instance import SharedInstance

__all__ = ["GenerationWaiter", "GenerationNotifier", "SLICE", "wait_semaphore_name"]

SLICE = 0.25  # seconds the dispatcher sleeps between looks at the coordinator's liveness


def wait_semaphore_name(instance: str, slot: int) -> str:
    return semaphore_name(instance, f"gw{slot}")


def _open_or_create(instance: str, slot: int) -> posix_ipc.Semaphore:
    name = wait_semaphore_name(instance, slot)
    try:
        return posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600, initial_value=0)
    except posix_ipc.ExistentialError:
        return open_semaphore(name, instance=instance)  # a previous holder's: ours and 0600, or refused


_E = TypeVar("_E", bound=ShmPoolError)


def own_copy(error: _E) -> _E:
    """A copy of the waiter's stored ``error`` for one waiter to raise (ShmPoolError rebuilds
    from its fields). Raising an object attaches the raiser's traceback to it, and so its frames
    and their locals: raised itself in every waiter, the one stored error kept every failed
    waiter's frames, and the contexts they held (so their pins, and the reader's row), for as
    long as the Reader's finalizer keeps this waiter, which is for good once a frame refers back
    to the Reader (tests/test_reader_review_wait_error_retention.py)."""
    return copy.copy(error)


def _settle(fut: "asyncio.Future[int]", value: int | BaseException) -> None:
    if not fut.done():
        if isinstance(value, BaseException):
            fut.set_exception(value)
        else:
            fut.set_result(value)


class GenerationWaiter:
    """The waiting side, one per Reader: the row's semaphore and the dispatcher thread."""

    def __init__(self, inst: "SharedInstance", slot: int) -> None:
        self._name = inst.name
        self._ctl: Control = inst.control
        self._row = inst.control.readers[slot]
        self._words = inst.control.words_mv
        self._dir = inst.control.directory_mv
        self._sem = _open_or_create(inst.name, slot)
        self._cond = threading.Condition()
        self._sync = 0                     # threads inside wait()
        self._futures: dict["asyncio.Future[int]", tuple[asyncio.AbstractEventLoop, int, int]] = {}
        self._error: ShmPoolError | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._row_ours = True  # False once closed by the collector: the row may be someone else's

    # ----------------------------------------------------------------- callers

    def wait(self, dimension_id: int, pos: int, after: int, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._sync += 1
            self._start_locked()
            try:
                while True:
                    # The error first: close() sets it under this condition before its Reader
                    # unmaps, so while we hold the condition and see none, the views are mapped.
                    if self._error is not None:
                        raise own_copy(self._error)
                    g = int(self._dir[pos])
                    if g > after:
                        return g
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise GenerationTimeout(dimension_id=dimension_id, after=after, generation=g,
                                                timeout=timeout or 0.0)
                    self._cond.wait(remaining)  # the dispatcher notifies after every wake-up
            finally:
                self._sync -= 1

    async def wait_async(self, dimension_id: int, pos: int, after: int, timeout: float | None) -> int:
        import asyncio  # already loaded where a loop runs; not in every reader's start (~25 ms)
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[int]" = loop.create_future()
        with self._cond:  # every read of the views under the condition, after the error: as wait()
            if self._error is not None:
                raise own_copy(self._error)
            g = int(self._dir[pos])
            if g > after:
                return g
            self._futures[fut] = (loop, pos, after)
            self._start_locked()
            self._cond.notify_all()  # the dispatcher looks once after arming: nothing published is missed
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            with self._cond:
                if self._error is not None:
                    raise own_copy(self._error) from None
                g = int(self._dir[pos])
            raise GenerationTimeout(dimension_id=dimension_id, after=after, generation=g,
                                    timeout=timeout or 0.0) from None
        finally:
            with self._cond:
                self._futures.pop(fut, None)

    def close(self, error: ShmPoolError, *, row_ours: bool = True) -> None:
        """Fail every waiter with ``error`` and stop the dispatcher (idempotent; the semaphore
        stays: the coordinator unlinks it). ``row_ours=False`` (the Reader was collected, so its
        row may already be released and reused): leave the row's words alone."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._row_ours = row_ours
            if self._error is None:
                self._error = error
            self._wake_all_locked()
            thread = self._thread
        self._sem.release()  # out of its sem_wait now rather than at the end of a slice
        if thread is not None and thread is not threading.current_thread():
            thread.join(SLICE * 4)
            if thread.is_alive():
                logger.debug("generation dispatcher of {!r} still running; semaphore left open", self._name)
                return
        if row_ours:
            self._row[RD.WAITING] = 0
        self._sem.close()

    # ----------------------------------------------------------------- dispatcher

    def _start_locked(self) -> None:
        if self._thread is None and self._error is None:
            self._thread = threading.Thread(target=self._run, name=f"shmpool-{self._name}-genwait", daemon=True)
            self._thread.start()

    def _waiting_locked(self) -> bool:
        return bool(self._sync or self._futures)

    def _wake_all_locked(self) -> None:
        """Every waiter looks at its generation (sync ones are woken; futures are checked here)."""
        self._cond.notify_all()
        for fut, (loop, pos, after) in list(self._futures.items()):
            value: int | ShmPoolError
            if self._error is not None:
                value = own_copy(self._error)  # not a look at the views: the Reader may unmap once it is set
            else:
                g = self._dir[pos]
                if g <= after:
                    continue
                value = g
            del self._futures[fut]
            try:
                loop.call_soon_threadsafe(_settle, fut, value)
            except RuntimeError:  # its loop is closed: nobody awaits it any more
                logger.debug("event loop of a generation waiter closed before it was woken")

    def _run(self) -> None:
        words, row = self._words, self._row
        while True:
            with self._cond:
                while not self._waiting_locked() and self._error is None:
                    row[RD.WAITING] = 0  # nobody waits: the coordinator need not post us
                    self._cond.wait()
                if self._error is not None:
                    if self._row_ours:
                        row[RD.WAITING] = 0
                    return
                row[RD.WAITING] = words[W.PIN_EPOCH] + 1  # armed: publications from here on post us
            with self._cond:
                if self._error is None:
                    self._wake_all_locked()  # one look after arming: what was published before it
            try:
                self._sem.acquire(SLICE)
                while True:  # drain re-posts, so they do not wake us again later
                    self._sem.acquire(0)
            except posix_ipc.BusyError:
                pass
            except posix_ipc.ExistentialError:
                self._fail(AttachError(name=self._name, reason="its generation wait semaphore was removed"))
                continue
            with self._cond:
                if self._error is not None:
                    continue  # closed while we slept: the top of the loop leaves, the words unread
                if words[W.STATE] != STATE_RUNNING:
                    self._fail(AttachError(name=self._name, reason="its coordinator stopped"))
                elif not is_alive(int(words[W.COORDINATOR_PID]), int(words[W.COORDINATOR_START])):
                    self._fail(AttachError(name=self._name, reason=f"its coordinator (pid "
                                                                   f"{int(words[W.COORDINATOR_PID])}) died"))

    def _fail(self, error: ShmPoolError) -> None:
        with self._cond:  # reentrant: a Condition over an RLock
            if self._error is None:
                self._error = error
            self._wake_all_locked()


class GenerationNotifier:
    """The coordinator's side: post the semaphore of every row with a waiter armed."""

    def __init__(self, inst: "SharedInstance") -> None:
        self._name = inst.name
        self._ctl: Control = inst.control
        self._sems: dict[int, posix_ipc.Semaphore] = {}

    def notify(self) -> int:
        """After a publication (PIN_EPOCH already bumped): wake every armed row; how many."""
        rows = self._ctl.readers
        return self._post(np.flatnonzero((rows[:, RD.WAITING] != 0) & (rows[:, RD.PID] != 0)))

    def resend(self) -> int:
        """Reaper round: post again rows armed before the last publication (a post they missed)."""
        rows = self._ctl.readers
        epoch = int(self._ctl.words[W.PIN_EPOCH])
        waiting = rows[:, RD.WAITING]
        return self._post(np.flatnonzero((waiting != 0) & (waiting - 1 < epoch) & (rows[:, RD.PID] != 0)))

    def _post(self, slots: Iterable[Any]) -> int:
        posted = 0
        for slot in slots:
            slot = int(slot)
            sem = self._sems.get(slot)
            try:
                if sem is None:
                    sem = self._sems[slot] = open_semaphore(wait_semaphore_name(self._name, slot),
                                                            instance=self._name)
                sem.release()
                posted += 1
            except posix_ipc.ExistentialError:
                logger.debug("reader slot {} armed a wake-up without its semaphore", slot)
            except ShmPoolError as exc:  # not ours: never post into someone else's object
                logger.warning("generation wake-up of reader slot {} of {!r} refused: {}", slot, self._name, exc)
        return posted

    def close(self) -> None:
        """At stop: wake every waiter one last time (they see STATE stopping), then let go and
        unlink the names this process knows (the instance's sweep removes the others)."""
        self.notify()
        for slot, sem in self._sems.items():
            try:
                sem.close()
                posix_ipc.unlink_semaphore(wait_semaphore_name(self._name, slot))
            except posix_ipc.ExistentialError:
                logger.debug("generation wait semaphore of slot {} already gone", slot)
        self._sems = {}
