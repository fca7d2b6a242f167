"""Supervision of reader worker processes, run inside the coordinator.

A worker that dies is reported with what its exit usually means, the requests it held are
requeued (a request that has already killed two workers fails with WorkerCrashed instead), and a
replacement is started. Nothing hangs: every wait has a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from loguru import logger

from shmpool.codec import decode_request, encode_error
from shmpool.errors import LockTimeout, ShmPoolError, WorkerCrashed
from shmpool.jobboard import JobBoard
from shmpool.jobs_layout import JW

__all__ = ["WorkerPool", "explain_exit"]

MAX_ATTEMPTS = 2

_SIGNAL_MEANING = {
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
    return f"exited with status {returncode} (an uncaught exception? its stderr says)"


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen
    started: float


class WorkerPool:
    """Starts, watches and replaces ``count`` worker processes for instance ``name``."""

    def __init__(self, name: str, board: JobBoard, count: int, *, env: dict[str, str] | None = None) -> None:
        if count < 1:
            raise ValueError(f"a worker pool needs at least one worker, got {count}")
        self.name = name
        self.board = board
        self.count = count
        self.workers: list[_Worker] = []
        self.deaths: list[dict] = []
        self._stopping = False
        self._env = dict(env or {})  # on top of ours; e.g. the job allow-list (workers/jobs.py)

    def _spawn(self, index: int) -> _Worker:
        proc = subprocess.Popen([sys.executable, "-m", "workers.worker", self.name, str(index)],
                                stdin=subprocess.DEVNULL, env={**os.environ, **self._env})
        return _Worker(index, proc, time.time())

    def start(self, timeout: float = 60.0) -> None:
        """Start the workers and return once every one is attached and serving."""
        target = int(self.board.v.words[JW.WORKERS_STARTED]) + self.count
        self.workers = [self._spawn(i) for i in range(self.count)]
        deadline = time.monotonic() + timeout
        while int(self.board.v.words[JW.WORKERS_STARTED]) < target:
            for w in self.workers:
                if w.proc.poll() is not None:
                    raise ShmPoolError(f"worker {w.index} (pid {w.proc.pid}) failed to start: "
                                       f"{explain_exit(w.proc.returncode)}")
            if time.monotonic() > deadline:
                raise ShmPoolError(f"workers of {self.name!r} not ready after {timeout} s")
            time.sleep(0.005)
        logger.info("{} workers of {!r} serving: pids {}", self.count, self.name,
                    [w.proc.pid for w in self.workers])

    def supervise(self) -> int:
        """Handle dead workers (called periodically by the coordinator); returns how many died."""
        if self._stopping:
            return 0
        died = 0
        for i, w in enumerate(self.workers):
            code = w.proc.poll()
            if code is None:
                continue
            meaning = explain_exit(code)
            try:
                requeued, failed = self.board.requeue_worker(w.proc.pid, self._failure_for(meaning), MAX_ATTEMPTS)
            except LockTimeout as exc:  # a stopped process holds the board: next round
                logger.warning("worker {} (pid {}) died, but its jobs wait: {}", w.index, w.proc.pid, exc)
                continue
            died += 1
            self.board.note_worker_death()
            self.deaths.append({"index": w.index, "pid": w.proc.pid, "returncode": code, "meaning": meaning,
                                "requeued": requeued, "failed": failed, "at": time.time()})
            logger.error("worker {} (pid {}) of {!r} {}; {} jobs requeued, {} failed; starting a replacement",
                         w.index, w.proc.pid, self.name, meaning, requeued, failed)
            self.workers[i] = self._spawn(w.index)
        return died

    def _failure_for(self, meaning: str):
        def fail(slot: int, attempts: int) -> bytes:
            try:
                job = decode_request(self.board.request(slot))[0]
            except Exception:  # the request itself may be what kills workers
                job = "?"
            return encode_error(WorkerCrashed(job=job, attempts=attempts, detail=f"last one {meaning}"))
        return fail

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every worker, wait up to ``timeout``, SIGKILL whoever is left."""
        self._stopping = True
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
