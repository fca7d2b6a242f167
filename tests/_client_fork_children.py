"""Processes for tests/test_client_fork.py: a client process that forks while connected.

The client process is started with the spawn context (a clean interpreter holding nothing but its
Client); it then calls ``os.fork()`` itself, as ``multiprocessing``'s default start method does on
Linux before Python 3.14. Both sides write what they saw as JSON into ``out_dir``: the test
process asserts on it. The forked child ends with ``os._exit`` as a forked worker would.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
import traceback
from pathlib import Path

import shmpool
from shmpool.jobs.jobboard import JobBoard
from shmpool.jobs.jobs_layout import CC

TYPED_WITHIN = 5.0  # seconds an inherited client has to refuse (a hang or a TimeoutError fails)
SHUTDOWN_WITHIN = 30.0  # a generous bound that only catches a hang


def _write(out_dir: str, who: str, report: dict) -> None:
    tmp = Path(out_dir) / f".{who}.json"
    tmp.write_text(json.dumps(report))
    tmp.rename(Path(out_dir) / f"{who}.json")


def _wait_file(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _my_channels(name: str) -> list[int]:
    board = JobBoard.attach(name)
    try:
        return [k for k in range(len(board.v.channels)) if int(board.v.channels[k, CC.PID]) == os.getpid()]
    finally:
        board.close()


def _refusal(action) -> dict:
    """What an inherited client does when used: the error's type and text, and how long it took."""
    t0 = time.monotonic()
    try:
        outcome = action()
    except BaseException as exc:  # noqa: BLE001 - the type is what the test checks
        return {"type": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__],
                "message": str(exc), "seconds": time.monotonic() - t0}
    return {"type": None, "result": repr(outcome), "seconds": time.monotonic() - t0}


def _child(name: str, client, out_dir: str, parent_pid: int, go: Path | None) -> dict:
    report: dict = {"pid": os.getpid()}
    if go is not None:  # the parent-exiting case: go on once the test has reaped the parent
        report["go"] = _wait_file(go, 60)
    report["submit"] = _refusal(lambda: client.submit("ping").result(TYPED_WITHIN))
    report["call"] = _refusal(lambda: client.call("ping", timeout=TYPED_WITHIN))
    report["map"] = _refusal(lambda: list(client.map(pow, [1, 2], [2, 2], timeout=TYPED_WITHIN)))
    # A connection of its own works, and stays the child's whatever the inherited one does next.
    own = shmpool.connect(name, timeout=10)
    report["own_first"] = own.call("ping", timeout=10)
    report["own_channels_before"] = _my_channels(name)
    client.close()  # must release nothing of the parent's (nor the child's new channel)
    client.shutdown(wait=True)
    client = None  # the inherited Client dropped here: its finalizer must release nothing
    gc.collect()
    report["own_channels_after"] = _my_channels(name)
    report["own_submits"] = [f.result(10) for f in [own.submit(pow, i, 2) for i in range(20)]]
    report["own_calls"] = [own.call(pow, i, 3, timeout=10) for i in range(20)]
    own.shutdown(wait=True)
    return report


def parent(name: str, out_dir: str, parent_exits: bool) -> None:
    """Connect, fork a child that uses the inherited client, then either keep working (and check
    that nothing of ours moved) or exit at once."""
    client = shmpool.connect(name, timeout=10)
    first = client.submit("ping").result(10)  # the completion thread runs and the channel is ours
    report: dict = {"pid": os.getpid(), "first": first, "channels_before": _my_channels(name)}
    go = Path(out_dir) / "go" if parent_exits else None
    child = os.fork()
    if child == 0:
        code = 1
        try:
            _write(out_dir, "child", _child(name, client, out_dir, report["pid"], go))
            code = 0
        except BaseException:  # noqa: BLE001 - reported, then the child ends
            try:
                _write(out_dir, "child", {"crash": traceback.format_exc()})
            finally:
                os._exit(code)
        os._exit(code)
    report["child"] = child
    if parent_exits:
        _write(out_dir, "parent", report)
        return  # the spawn child exits with its client still connected: the parent is gone
    # While the child runs and after it ended: every answer of ours reaches us.
    during = [client.submit(pow, i, 2) for i in range(50)]
    report["during"] = [f.result(30) for f in during]
    _, status = os.waitpid(child, 0)
    report["child_status"] = status
    # The child dropped its copy of our client, reader included: our reader row must be ours still.
    reader = client.reader
    report["reader_row_kept"] = any(row["slot"] == reader._slot and row["pid"] == os.getpid()
                                    for row in reader._map._registry.live())
    report["after"] = [f.result(30) for f in [client.submit(pow, i, 3) for i in range(50)]]
    report["after_calls"] = [client.call(pow, i, 2, timeout=30) for i in range(20)]
    report["channels_after"] = _my_channels(name)
    # Another connection gets another channel: ours is still ours.
    other = shmpool.connect(name, timeout=10)
    report["other_ping"] = other.call("ping", timeout=10)
    other.shutdown(wait=True)
    stopper = threading.Thread(target=client.shutdown, kwargs={"wait": True}, daemon=True)
    t0 = time.monotonic()
    stopper.start()
    stopper.join(SHUTDOWN_WITHIN)
    report["shutdown_returned"] = not stopper.is_alive()
    report["shutdown_seconds"] = time.monotonic() - t0
    _write(out_dir, "parent", report)
