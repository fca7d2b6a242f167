"""Run in a spawned process by tests/test_client_review_fork_quiet_lock.py: fork while another
thread holds the lock QuietFutures make their Condition under, as the completion thread does
for the few instructions of every settle; the child connects anew and waits for a result."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import shmpool
from shmpool.jobs import client_link

CHILD_WAIT = 30.0  # seconds the parent gives its child (a hang only: it needs well under one)


def fork_while_settling(name: str, out: str) -> None:
    report: dict[str, object] = {}
    with shmpool.connect(name) as parent_client:
        assert parent_client.submit(pow, 2, 2).result(30) == 4
        held, release = threading.Event(), threading.Event()

        def settling() -> None:  # the owner thread inside QuietFuture._finish_unwatched, frozen
            with client_link._MAKING:
                held.set()
                release.wait(60)

        holder = threading.Thread(target=settling)
        holder.start()
        held.wait(30)
        pid = os.fork()
        if pid == 0:  # the child: a fresh client of its own, as docs/usage.md says to make
            code = 1
            try:
                with shmpool.connect(name) as own:
                    future = own.submit(time.sleep, 0.2)
                    future.result(10)  # pending when asked: waits on the future's Condition
                    code = 0 if own.submit(pow, 3, 3).result(10) == 27 else 2
            except BaseException as exc:  # noqa: BLE001  # reported through the exit status
                print(f"child: {exc!r}", file=sys.stderr, flush=True)
            os._exit(code)
        release.set()
        holder.join(30)
        deadline = time.monotonic() + CHILD_WAIT
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
        report["child_exit"] = None if status is None else os.waitstatus_to_exitcode(status)
        report["parent_works"] = parent_client.submit(pow, 2, 5).result(30) == 32
    with open(out, "w") as fh:
        json.dump(report, fh)
