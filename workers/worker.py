"""A reader worker process: ``python -m shmpool.workers.worker NAME INDEX``.

It attaches to the instance like any reader, then serves jobs from the job board until told to
stop (SIGTERM / SIGINT) or until its coordinator disappears. Results larger than a slot's response
area are written into a table allocation whose ownership passes to the client. Array arguments
a client spilled (shmpool/jobs/arg_spill.py) reach the job as read-only views of the client's
allocation: the client frees it once it has the answer, unless the job kept a view of it past
its return; then this worker takes it over and frees it once the last view is gone
(kept_arguments.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
import weakref
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import posix_ipc
from shmpool.substrate._log import logger, when_loguru_imported

import shmpool
from shmpool.substrate import _faults
from shmpool.substrate.lock import retry_interrupted_waits
from shmpool.jobs.spin import SPIN_ENV, spin_seconds
from shmpool.substrate.timeouts import MAX_TIMEOUT
from shmpool.jobs.arg_spill import ArgumentsRef, free_arguments, open_arguments
from shmpool.jobs.codec import (FLAG_CHUNK, FLAG_PLAIN, FLAG_SINGLE, ArgumentSource, Decoder, decode_job, decoder,
                                encode_error, encode_result)
from shmpool.errors import AttachError, ShmPoolError
from shmpool.jobs.jobboard import JobBoard
from shmpool.jobs.jobs_layout import Status
from shmpool.substrate.names import runtime_dir
from shmpool.jobs.spill import send_large
from shmpool.jobs.worker_context import _set_worker_reader
from shmpool.data.reader import Reader
from shmpool.substrate.instance import SharedInstance

from .config import WorkerConfig
from .jobs import resolve_job
from .kept_arguments import KeptArguments
from .watchdog import start_watchdog

if TYPE_CHECKING:
    import numpy as np
    from loguru import Logger

LOGGING_PACKAGES = ("shmpool", "__main__")
POLL = 0.2  # seconds between checks that the coordinator still lives
DROP_STALE_EVERY = 0.1  # seconds between releases of superseded generations
# The worker's exit status when its initializer raised (coordinator/pool.py explains it; the error
# text is left in init_error_path() for the pool to report).
EXIT_INIT_FAILED = 5

_config = WorkerConfig()  # what the coordinator sent (SHMPOOL_WORKER), read once in main()


class InitializerFailed(Exception):
    """The worker's initializer raised; the worker exits with EXIT_INIT_FAILED."""


def init_error_path(name: str, pid: int) -> Path:
    """Where a worker whose initializer failed leaves the error text for its pool (0600, ours)."""
    return runtime_dir() / f"{name}.worker-{pid}.init-error"


def _prepare(name: str, board: JobBoard, reader: Reader) -> None:
    """Before serving: jobs may ask for the reader, then the initializer runs once."""
    _set_worker_reader(reader)
    try:
        _config.run_initializer()
    except BaseException as exc:
        text = f"{type(exc).__name__}: {exc}"
        print(f"shmpool worker (pid {os.getpid()}): initializer {_config.init} failed:\n"
              + "".join(traceback.format_exception(exc)), file=sys.stderr, flush=True)
        try:
            fd = os.open(init_error_path(name, os.getpid()), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                         0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        except OSError as err:
            logger.debug("initializer error not recorded for the pool: {}", err)
        board.close()
        reader.close()
        raise InitializerFailed(text) from None


def serve(name: str, index: int, stop: threading.Event) -> int:
    reader = shmpool.attach(name)
    board = JobBoard.attach(name)
    inst = reader.instance
    start_watchdog(index, inst.coordinator())  # ends this process mid-job if the coordinator dies
    _prepare(name, board, reader)
    board.note_worker_started()
    served = 0
    last_drop = time.monotonic()
    spin = spin_seconds(float(os.environ.get(SPIN_ENV) or 0))  # the coordinator's worker_spin_us
    serving = _Serving(board, inst, reader)
    core = board.core
    try:
        while not stop.is_set():
            if time.monotonic() - last_drop >= DROP_STALE_EVERY:
                # Release generations we no longer serve, so eviction and reclamation can free them.
                reader.drop_stale()
                last_drop = time.monotonic()
            try:
                if not (spin and core.spin_queue(spin)):
                    # A futex wait on the queue's tail: returns at once if something is queued.
                    woken = core.wait_queue(POLL)
                    if not woken:
                        if not inst.coordinator_alive():
                            break
                        if serving.kept.held:  # idle: views a job kept may have gone meanwhile
                            serving.kept.release_unused()
                    elif _faults.ARMED:
                        _faults.point("worker.woken")  # woken, has not taken the job
                    # Woken or not, look: the queue, not the wake-up, is the truth (a submitter
                    # may have died between queueing and waking).
            except posix_ipc.SignalError:
                continue  # SIGTERM/SIGINT set `stop`; the loop condition ends the worker
            # Drain what is queued without sleeping again: each finish takes the next request
            # in the same lock round. A request taken is always run, even when stop is set
            # meanwhile: it is RUNNING in our name, and nobody else would.
            taken = serving.take() if not stop.is_set() else None
            while taken is not None:
                taken = serving.run(*taken, take_next=not stop.is_set())
                served += 1
                if serving.kept.held:  # this job may have let go of a view an earlier one kept
                    serving.kept.release_unused()
    finally:
        serving.kept.close()
        board.close()
        reader.close()
    logger.debug("worker {} (pid {}) served {} jobs", index, os.getpid(), served)
    return 0


class _Serving:
    """What running one request needs, looked up once per worker instead of once per job."""

    def __init__(self, board: JobBoard, inst: SharedInstance, reader: Reader) -> None:
        self.board, self.inst, self.reader = board, inst, reader
        self.core = board.core
        self.payload = board.payload
        self.pid, self.start = board.identity()
        self.arguments = ArgumentSource()  # the running request's spilled arrays, while it is decoded
        self.decode: Decoder = decoder(lambda d, l, _g: reader.load_layer_context(d, l), self.arguments)
        self.kept = KeptArguments(inst, self.pid, self.start)  # arguments of jobs that kept a view
        self.own_pid = os.getpid()  # a job that forks returns twice; only this process may answer

    def run(self, slot: int, seq: int, *, take_next: bool) -> tuple[int, int] | None:
        """Run one request and hand its response over; returns the next request taken, if asked."""
        job = "?"
        spilled = self.board.arguments(slot)  # written with the request; None for most requests
        memory = None  # what every array made of the spilled arguments holds (a weak reference)
        try:
            if spilled is not None:
                memory = self.arguments.lend(open_arguments(self.inst, spilled))
            try:
                request = decode_job(self.core.request(slot), decode=self.decode)
            finally:
                self.arguments.memory = None  # the arrays made hold the memory; nothing else may
            job = request.job
            timeout = request.job_timeout if request.job_timeout is not None else _config.job_timeout
            if timeout is not None and timeout < MAX_TIMEOUT:  # beyond: no limit (a client may send 1e300)
                self.board.set_deadline(slot, time.monotonic_ns() + int(timeout * 1e9))
            flags, args, kwargs = request.flags, request.args, request.kwargs
            fn = resolve_job(job, plain=bool(flags & FLAG_PLAIN))
            # A name runs with the reader first; a callable as is.
            if flags & FLAG_CHUNK:
                reader = self.reader
                if flags & FLAG_SINGLE:  # map's chunks carry no keywords
                    if flags & FLAG_PLAIN:
                        result = self._each(lambda a: fn(a), args)
                    else:
                        result = self._each(lambda a: fn(reader, a), args)
                elif flags & FLAG_PLAIN:
                    result = self._each(lambda a: fn(*a, **kwargs), args)
                else:
                    result = self._each(lambda a: fn(reader, *a, **kwargs), args)
            elif flags & FLAG_PLAIN:
                result = fn(*args, **kwargs)
            else:
                result = fn(self.reader, *args, **kwargs)
            status, payload = _OK, encode_result(result, job)
        except BaseException as exc:
            # Every job failure goes back to its client, typed: SystemExit and KeyboardInterrupt
            # raised by job code too (sys.exit() in a job), as ProcessPoolExecutor delivers them.
            # Letting them through would kill this worker, and the requeued job would run again and
            # end as WorkerCrashed. A stop never arrives this way: SIGTERM/SIGINT only set `stop`,
            # and the watchdog ends the process with os._exit.
            if os.getpid() != self.own_pid:
                _leave_forked_child(exc)
            status, payload = _ERROR, encode_error(exc)
        if os.getpid() != self.own_pid:
            _leave_forked_child(None)
        if spilled is None and len(payload) <= self.payload:  # the job path: one call into the core
            return self.core.finish(slot, seq, status, payload, take_next, self.pid, self.start)[1]
        kept = False
        if spilled is not None:
            # Our references go first: whatever still holds the memory now, the job kept.
            request = args = kwargs = result = fn = None  # type: ignore[assignment]
            kept = memory is not None and self._keep(memory, spilled, slot, seq)
        taken: tuple[int, int] | None
        if len(payload) <= self.payload:
            delivered, taken = self.core.finish(slot, seq, status, payload, take_next, self.pid, self.start)
        else:
            delivered = send_large(self.board, self.inst, slot, seq, Status(status), payload)  # shmpool/jobs/spill.py
            taken = self.take() if take_next else None
        if spilled is not None and not delivered and not kept:
            # Orphaned (its client let go while it ran): nobody else frees the arguments now.
            free_arguments(self.inst, spilled)
        return taken

    def take(self) -> tuple[int, int] | None:
        """Take the next request in a lock round of its own (not a finish's, which never leaves
        the board idle): if every slot was free and the coordinator's reaper sleeps for up to a
        second meanwhile, post it, as this job's deadline and this worker's death need it on its
        20 ms rounds again."""
        taken = self.core.take(self.pid, self.start)
        if taken is not None and self.board.claim_reaper_wake():
            self.inst.wake_coordinator()
        return taken

    def _each(self, call: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """A chunk's items in turn; a forked child that returns from one leaves there, before
        it would run the chunk's later items a second time. Told by the at-fork flag, an
        attribute read (getpid() per item was ~0.13 us, a system call); a fork that bypasses
        os.fork's hooks (a C extension's) is still caught by the job's own getpid check, after
        the chunk."""
        out = []
        for item in items:
            out.append(call(item))
            if _forked.child:
                _leave_forked_child(None)
        return out

    def _keep(self, memory: "weakref.ref[np.ndarray[Any, Any]]", spilled: ArgumentsRef, slot: int, seq: int) -> bool:
        """If the job kept a view of its spilled arguments, take them over and mark the answer
        so that its reader does not free them; both before the answer is published (a reader
        that freed them first would leave the view on reused memory). True if kept."""
        try:
            kept = self.kept.take_over(memory, spilled)
        except ShmPoolError as exc:  # freed under a RUNNING job: nothing left to keep
            logger.warning("spilled arguments {} of a job that kept a view of them were freed: {}", spilled, exc)
            kept = False
        if _faults.ARMED and kept:
            _faults.point("arguments.taken_over")  # ours, not marked: the requeued run reads them
        self.board.mark_kept(slot, seq, kept)  # always written: an earlier run's mark must not stand
        if _faults.ARMED and kept:
            _faults.point("arguments.kept")  # ours and marked, not answered
        return kept


_OK, _ERROR = int(Status.OK), int(Status.ERROR)


class _forked:
    """Set in a child of os.fork() (register_at_fork below): a job's own fork, in a worker."""
    child = False


def _mark_forked_child() -> None:
    _forked.child = True


os.register_at_fork(after_in_child=_mark_forked_child)


def _leave_forked_child(failure: BaseException | None) -> None:
    """A job called fork() and its child returned from the job: it is a copy of this worker,
    mid-job, with the worker's identity on the board. Answering would finish the parent's slot,
    and serving on would take jobs in the parent's name (one it then died with would stay RUNNING
    under a living pid); its reader has no row of its own. It leaves at once, touching nothing
    shared and running no exit hooks of the worker's (they would free the parent's kept
    arguments); what the job printed is flushed first. Its exit status is the one the child
    asked for (``sys.exit(n)``), 1 after any other exception (its traceback on stderr), else 0."""
    code = 0
    if isinstance(failure, SystemExit):
        code = failure.code if isinstance(failure.code, int) else 0 if failure.code is None else 1
        if not isinstance(failure.code, (int, type(None))):
            print(failure.code, file=sys.stderr)
    elif failure is not None:
        code = 1
        traceback.print_exception(failure)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


def _write_stderr(message: str) -> None:
    sys.stderr.write(message)


def _configure_logging(log: "Logger", index: int) -> None:
    log.remove()
    for package in LOGGING_PACKAGES:
        log.enable(package)
    level = os.environ["SHMPOOL_LOG_LEVEL"].upper()
    log.configure(extra={"worker": index})
    if os.environ.get("SHMPOOL_LOG_FORMAT") == "json":
        # The coordinator's side logs one JSON object per line (--log-format json); a worker
        # shares its stderr, so a text line from it would break every line-by-line reader.
        log.add(_write_stderr, level=level, serialize=True)
    else:
        log.add(sys.stderr, level=level,
                format="{time:HH:mm:ss.SSS} | {level: <7} | worker {extra[worker]} | {message}")


def main(argv: list[str] | None = None) -> int:
    global _config
    argv = sys.argv[1:] if argv is None else argv
    name, index = argv[0], int(argv[1])
    _config = WorkerConfig.from_env()
    _config.apply_sys_path()  # before any job module is imported
    # A worker is a process of ours: it may configure logging. Silent unless the coordinator's
    # side asked for a level (the CLI exports SHMPOOL_LOG_LEVEL to its workers).
    if os.environ.get("SHMPOOL_LOG_LEVEL"):
        _configure_logging(logger, index)
    else:
        # No sink, so that a job's own loguru records are not printed either. Done when loguru
        # is imported (by a job, or never), not here: importing it is ~80 ms of a worker's start.
        when_loguru_imported(lambda real: real.remove())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Those handlers only set a flag: a lock wait they interrupt (SIGTERM at stop, inside a
    # finish()) resumes, instead of losing a finished result to a SignalError traceback.
    retry_interrupted_waits()
    try:
        return serve(name, index, stop)
    except AttachError as exc:
        print(f"shmpool worker {index}: {exc}", file=sys.stderr)
        return 3
    except InitializerFailed:
        return EXIT_INIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
