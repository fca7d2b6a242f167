"""Jobs that call fork() themselves (tests/test_worker_job_forks.py): the child returns from the
job into the worker's loop, as a raw ``os.fork()`` in user code does."""

from __future__ import annotations

import os
import time
from pathlib import Path


def fork_and_return(marker: str, child_lingers: float = 0.0) -> str:
    """Fork; both return from the job. The child first writes its pid to ``marker``."""
    pid = os.fork()
    if pid == 0:
        Path(marker + ".tmp").write_text(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
        time.sleep(child_lingers)
        return "child"
    return "parent"


def worker_pid() -> int:
    return os.getpid()


def fork_and_report(how: str) -> int:
    """Fork; the child ends the job as ``how`` says, the parent waits for it and returns its exit
    status (the child's own, as the worker let it leave)."""
    import sys

    pid = os.fork()
    if pid == 0:
        if how == "exit 7":
            sys.exit(7)
        if how == "raise":
            raise ValueError("the child failed")
        return -1  # "return": as fork_and_return's child
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def note_and_fork_first(x: int, folder: str) -> int:
    """Item 0 of a map forks and both return; every item notes which process ran it."""
    if x == 0 and os.fork() == 0:
        return -1
    Path(folder, f"{x}.{os.getpid()}").write_text("")
    return x
