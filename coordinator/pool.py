"""Supervision of reader worker processes, run inside the coordinator.

A worker that dies is reported with what its exit usually means, the requests it held are
requeued (a request that has already killed two workers fails with WorkerCrashed instead), and a
replacement is started. Nothing hangs: every wait has a timeout.

Two more duties, both once per supervision round:

- **Job timeouts.** A worker stores the deadline of the job it runs in the slot (SC.DEADLINE_NS);
  a job past it has its worker SIGKILLed and its future failed with JobTimeout, in one step
  under the board's lock (JobBoard.expire), and the worker is replaced like any dead one. Killing
  the process is the only way to stop user code that may block in C or catch everything.
- **No crash loops.** A worker whose initializer raised (exit status 5), or that dies young again
  and again, is restarted after a growing pause (0.5 s, doubling, at most RESTART_BACKOFF_MAX),
  so a broken initializer costs one process start per pause, not a hundred a second.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from shmpool.substrate._log import logger

from shmpool.substrate._proc import start_token
from shmpool.jobs.codec import encode_error, request_header
from shmpool.errors import (InvalidArgument, JobTimeout, LockTimeout, WorkerCrashed, WorkerInitFailed, WorkersNotReady,
                            WorkerStartFailed)
from shmpool.jobs.jobboard import JobBoard

from ..workers.config import CONFIG_ENV, WorkerConfig
from ..workers.watchdog import EXIT_COORDINATOR_GONE
from ..workers.worker import EXIT_INIT_FAILED, init_error_path
from .worker_exits import ExitWatch

__all__ = ["WorkerPool", "explain_exit"]

MAX_ATTEMPTS = 2
MIN_UPTIME = 1.0             # seconds: a worker that dies younger counts towards a crash loop
RESTART_BACKOFF = 0.5        # seconds before the first delayed restart, doubling per failure
RESTART_BACKOFF_MAX = 30.0

_SIGNAL_MEANING: dict[int, str] = {
    signal.SIGKILL: "killed with SIGKILL (the OOM killer, or `kill -9`)",
    signal.SIGSEGV: "crashed with a segmentation fault in native code",
    signal.SIGBUS: "crashed with a bus error (a mapping shrank under it?)",
    signal.SIGABRT: "aborted (a failed assertion in native code)",
    signal.SIGTERM: "terminated by SIGTERM from outside the coordinator",
    signal.SIGINT: "interrupted (SIGINT)",
}


def explain_exit(returncode: int) -> str:
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return _SIGNAL_MEANING.get(sig, f"killed by {name}")
    if returncode == 3:
        return "exited with status 3: it could not attach to the instance"
    if returncode == EXIT_COORDINATOR_GONE:
        return f"exited with status {returncode}: its coordinator was gone (watchdog)"
    if returncode == EXIT_INIT_FAILED:
        return f"exited with status {returncode}: its initializer (worker_init) raised"
    return f"exited with status {returncode} (an uncaught exception? its stderr says)"


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    started: float
    start_token: int = 0    # its /proc start time, read while it cannot have been reaped yet
    handled: bool = False   # its death is dealt with; a replacement waits for restart_at
    restart_at: float = 0.0


class WorkerPool:
    """Starts, watches and replaces ``count`` worker processes for instance ``name``."""

    def __init__(self, name: str, board: JobBoard, count: int, *, env: dict[str, str] | None = None,
                 config: WorkerConfig | None = None, on_exit: Callable[[], None] | None = None) -> None:
        if count < 1:
            raise InvalidArgument(argument="count", value=count, reason="a worker pool needs at least one worker")
        self.name = name
        self.board = board
        self.count = count
        self.config = config if config is not None else WorkerConfig.build()
        self.workers: list[_Worker] = []
        self.deaths: list[dict[str, Any]] = []
        self._stopping = False
        # On top of ours: the job allow-list (workers/jobs.py) and the config (workers/config.py).
        self._env = {**(env or {}), CONFIG_ENV: self.config.to_json()}
        self._timed_out: dict[int, str] = {}   # pid -> why we killed it
        self._planned: dict[int, str] = {}     # pid -> who killed it on purpose (kill())
        self._streak: dict[int, int] = {}      # index -> consecutive early deaths
        # Calls on_exit (the coordinator: post its reaper's wake semaphore) the moment a worker
        # exits, so that the reaper need not poll the workers to notice (worker_exits.py).
        self._exits = ExitWatch(name, on_exit) if on_exit is not None else None
        self.behind = False  # the last supervise() left a dead worker unhandled (retried next round)

    def _spawn(self, index: int) -> _Worker:
        proc = subprocess.Popen([sys.executable, "-m", "shmpool.workers.worker", self.name, str(index)],
                                stdin=subprocess.DEVNULL, env={**os.environ, **self._env})
        if self._exits is not None:
            self._exits.watch(proc.pid)
        # The child exists from here on and is ours to reap, so its pid cannot be reused before
        # we read its start time: the board then tells its slots from a later namesake's.
        return _Worker(index, proc, time.time(), start_token(proc.pid))

    def start(self, timeout: float = 60.0) -> None:
        """Start the workers and return once every one is attached and serving.

        WorkerInitFailed if a worker's initializer raised; WorkerStartFailed if one died otherwise;
        WorkersNotReady if they are not all serving within ``timeout``."""
        before = self.board.workers_started()
        target = before + self.count
        self.workers = [self._spawn(i) for i in range(self.count)]
        deadline = time.monotonic() + timeout
        while self.board.workers_started() < target:
            for w in self.workers:
                if w.proc.poll() is not None:
                    if w.proc.returncode == EXIT_INIT_FAILED:
                        raise WorkerInitFailed(index=w.index, pid=w.proc.pid, initializer=str(self.config.init),
                                               error=self._init_error(w.proc.pid))
                    raise WorkerStartFailed(index=w.index, pid=w.proc.pid, reason=explain_exit(w.proc.returncode))
            if time.monotonic() > deadline:
                raise WorkersNotReady(name=self.name, timeout=timeout, ready=self.board.workers_started() - before,
                                      count=self.count)
            time.sleep(0.005)
        logger.info("{} workers of {!r} serving: pids {}", self.count, self.name,
                    [w.proc.pid for w in self.workers])

    def _init_error(self, pid: int) -> str:
        path = init_error_path(self.name, pid)
        try:
            text = path.read_text(errors="replace")[:2000]
            path.unlink()
        except OSError:
            text = "no error recorded (its stderr says)"
        return text

    def supervise(self) -> int:
        """Handle dead workers and jobs past their deadline (called periodically by the
        coordinator); returns how many workers died."""
        if self._stopping:
            return 0
        self._enforce_deadlines()
        self.behind = False
        died = 0
        now = time.monotonic()
        for i, w in enumerate(self.workers):
            if w.handled:
                if now >= w.restart_at:
                    self.workers[i] = self._spawn(w.index)
                continue
            code = w.proc.poll()
            if code is None:
                continue
            planned = self._planned.pop(w.proc.pid, None)
            meaning = planned or self._timed_out.pop(w.proc.pid, None) or explain_exit(code)
            try:
                requeued, failed = self.board.requeue_worker(w.proc.pid, self._failure_for(meaning), MAX_ATTEMPTS,
                                                             start=w.start_token)
            except LockTimeout as exc:  # a stopped process holds the board: next round
                logger.warning("worker {} (pid {}) died, but its jobs wait: {}", w.index, w.proc.pid, exc)
                self.behind = True  # its exit woke the reaper once: the next round must come unasked
                continue
            died += 1
            self.board.note_worker_death()
            if code == EXIT_INIT_FAILED:
                meaning = f"{meaning}: {self._init_error(w.proc.pid)}"
            delay = self._restart_delay(w, code, meaning)
            self.deaths.append({"index": w.index, "pid": w.proc.pid, "returncode": code, "meaning": meaning,
                                "requeued": requeued, "failed": failed, "at": time.time(),
                                "restart_in": delay})
            # A death someone asked for (a stress test's kill) is news, not an error.
            logger.log("INFO" if planned else "ERROR", "worker {} (pid {}) of {!r} {}; {} jobs requeued, {} failed; {}",
                       w.index, w.proc.pid, self.name, meaning, requeued, failed,
                       f"restarting it in {delay:g} s" if delay else "starting a replacement")
            if delay:
                w.handled, w.restart_at = True, now + delay
            else:
                self.workers[i] = self._spawn(w.index)
        return died

    @property
    def exits_are_events(self) -> bool:
        """Whether every worker's exit wakes the reaper (pidfds), so that it need not poll them."""
        return self._exits is not None and self._exits.reliable

    def next_restart(self) -> float | None:
        """time.monotonic() of the earliest delayed restart (a crash loop's pause), or None."""
        return min((w.restart_at for w in self.workers if w.handled), default=None)

    def kill(self, pid: int, why: str) -> bool:
        """SIGKILL worker ``pid`` on purpose; ``why`` (who asked) is its death's meaning, logged at
        INFO instead of as an ERROR. False, killing nothing, if ``pid`` is no live worker of ours."""
        if pid not in [w.proc.pid for w in self.workers if w.proc.poll() is None]:
            return False
        self._planned[pid] = f"killed with SIGKILL by {why} (on purpose)"
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it died meanwhile: an ordinary death after all
            self._planned.pop(pid, None)
            return False
        return True

    def _restart_delay(self, w: _Worker, code: int, meaning: str) -> float:
        # A SIGKILL comes from outside (an operator, a chaos test, the OOM killer): replaced at
        # once like before, or a kill soon after a restart would stall the pool for up to 30 s.
        young = (time.time() - w.started < MIN_UPTIME and "job_timeout" not in meaning
                 and code != -signal.SIGKILL)
        streak = self._streak.get(w.index, 0) + 1 if code == EXIT_INIT_FAILED or young else 0
        self._streak[w.index] = streak
        if streak == 0 or (streak == 1 and code != EXIT_INIT_FAILED):
            return 0.0  # a single early death (a kill, a crash) is replaced at once, as ever
        return min(RESTART_BACKOFF_MAX, RESTART_BACKOFF * 2.0 ** (streak - (1 if code == EXIT_INIT_FAILED else 2)))

    def _enforce_deadlines(self) -> None:
        ours = {w.proc.pid for w in self.workers if not w.handled and w.proc.poll() is None}
        for slot, seq, pid in self.board.expired():
            if pid not in ours or pid in self._timed_out:
                continue
            try:  # the header only: a spilled argument is not the supervisor's to map
                job, limit = request_header(self.board.request(slot))
            except Exception:  # a request that does not decode still gets its worker back
                job, limit = "?", None
            limit = limit if limit is not None else (self.config.job_timeout or 0.0)
            payload = encode_error(JobTimeout(job=job, timeout=limit, worker_pid=pid))
            try:
                killed = self.board.expire(slot, seq, pid, payload, kill=functools.partial(os.kill, pid, signal.SIGKILL))
            except (LockTimeout, ProcessLookupError) as exc:
                logger.warning("job {!r} past its deadline not ended yet: {}", job, exc)
                continue
            if killed:
                self._timed_out[pid] = f"killed (SIGKILL) for running job {job!r} past its job_timeout of {limit:g} s"

    def _failure_for(self, meaning: str) -> Callable[[int, int], bytes]:
        def fail(slot: int, attempts: int) -> bytes:
            try:
                job = request_header(self.board.request(slot))[0]
            except Exception:  # the request itself may be what kills workers
                job = "?"
            return encode_error(WorkerCrashed(job=job, attempts=attempts, detail=f"last one {meaning}"))
        return fail

    def pids(self) -> list[int]:
        """Pids of the workers started and not yet found dead (a delayed restart has none)."""
        return [w.proc.pid for w in self.workers if not w.handled]

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every worker, wait up to ``timeout``, SIGKILL whoever is left."""
        self._stopping = True
        if self._exits is not None:
            self._exits.close()  # these exits are ours: nobody needs waking for them
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.terminate()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker {} (pid {}) ignored SIGTERM; killing it", w.index, w.proc.pid)
                w.proc.kill()
                w.proc.wait(5)
