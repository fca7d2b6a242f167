"""What a job running in a worker can ask of its worker: ``shmpool.worker_reader()``.

A job submitted as a callable runs as ``fn(*args, **kwargs)``, exactly as with any Executor, so
the worker's attached Reader is not among its arguments; a job that reads the instance's data
asks for it here. Jobs submitted by name keep receiving it as their first argument.
"""

from __future__ import annotations

from ..errors import NotInWorker
from ..data.reader import Reader

__all__ = ["worker_reader"]

_reader: Reader | None = None


def worker_reader() -> Reader:
    """The Reader this worker process serves jobs with (attached once, shared by every job).

    Raises NotInWorker (a ShmPoolError) outside a shmpool worker (in a client, attach a Reader of your own with
    ``shmpool.attach(name)``, or use ``client.reader``).
    """
    if _reader is None:
        raise NotInWorker(call="shmpool.worker_reader()")
    return _reader


def _set_worker_reader(reader: Reader | None) -> None:
    """Called by the worker (workers/worker.py) once attached, before its initializer runs."""
    global _reader
    _reader = reader
