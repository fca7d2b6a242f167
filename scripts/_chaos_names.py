"""The removed-names campaign of scripts/chaos.py: an instance's /dev/shm names deleted while it serves.

What systemd-logind's ``RemoveIPC=yes`` does when a user's last session ends (docs/operations.md,
"Names removed under a running instance"). Each round serves with a real ``shmpool serve``
subprocess (2 workers), attaches a reader and connects a client in this process, keeps jobs
going, then unlinks the instance's names the way logind does (plain ``unlink`` of
``/dev/shm/shmpool.NAME.*`` and ``/dev/shm/sem.shmpool.NAME.*``): every name in round ``all``,
only the semaphores in round ``semaphores``. Then:

* the coordinator stops by itself (``stop_seconds``; a hang past ``STOP_LIMIT`` fails), exit status 1, with an ERROR
  naming RemoveIPC and its fix; its workers are gone and none was restarted into a loop;
* the client and the reader get typed errors or right answers, never a hang or a wrong byte (a
  context held across the removal keeps its bytes: the mapping outlives the name);
* ``shmpool health`` then says the instance is not running, a new coordinator can take the
  name, and nothing of it is left in /dev/shm.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import shmpool
from shmpool.errors import ShmPoolError
from shmpool.substrate._proc import child_pids

from _chaos_clients import SLOW_JOB

__all__ = ["campaign_names", "ROUNDS"]

ROUNDS = ("all", "semaphores")
# Seconds from the removal to the coordinator's exit: a bound that catches a coordinator that never
# notices; the time itself is reported (stop_seconds: 0.29 s for all names, 1.28 s for the
# semaphores only, measured) for a reader to judge "within seconds".
STOP_LIMIT = 30.0
RESULT_WAIT = 5.0     # a job or lookup answer later than this is a hang
CLI = [sys.executable, "-m", "shmpool"]
SHM_DIR = Path("/dev/shm")


def _serve(name: str, log: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*CLI, "serve", name, "--sample", "--workers", "2", "--job-module", "_chaos_jobs",
                             "--memory-limit", "100MiB"],
                            stdout=subprocess.PIPE, stderr=log.open("w"), stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0] and "serving" in proc.stdout.readline():
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"shmpool serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
    proc.kill()
    raise RuntimeError("shmpool serve did not print its ready line within 120 s")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _remove(name: str, which: str) -> int:
    prefixes = (f"sem.shmpool.{name}.",) if which == "semaphores" else (f"shmpool.{name}.", f"sem.shmpool.{name}.")
    removed = 0
    for entry in os.listdir(SHM_DIR):
        if entry.startswith(prefixes):
            os.unlink(SHM_DIR / entry)
            removed += 1
    return removed


class _Jobs:
    """Jobs submitted back to back in a thread until one fails; what ended it, and whether it hung."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.ok = self.wrong = 0
        self.ended_by: str | None = None
        self.typed = True
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            tag = f"names-{i}"
            try:
                got = self.client.submit(SLOW_JOB, 0.002, tag, timeout=RESULT_WAIT).result(RESULT_WAIT)
            except Exception as exc:  # noqa: BLE001 - the outcome is the finding
                self.ended_by = f"{type(exc).__name__}: {exc}"[:300]
                self.typed = isinstance(exc, ShmPoolError)
                return
            self.ok += got == tag
            self.wrong += got != tag
            i += 1


def _round(name: str, which: str, tmp: Path, make_coordinator: Callable[[str], Any],
           list_objects: Callable[[str], tuple[list[str], list[str]]]) -> dict[str, Any]:
    log = tmp / f"serve-{which}.log"
    proc = _serve(name, log)
    out: dict[str, Any] = {"round": which}
    try:
        workers = child_pids(proc.pid)
        reader = shmpool.attach(name)
        client = shmpool.connect(name, timeout=RESULT_WAIT)
        dim = min(reader.dimensions())
        layer = reader.layer_ids(dim)[0]
        held = reader.load_layer_context(dim, layer)
        held_bytes = bytes(held.content)
        jobs = _Jobs(client)
        time.sleep(0.3)  # jobs under way when the names go
        out["names_removed"] = _remove(name, which)
        t0 = time.monotonic()
        try:
            code: int | None = proc.wait(STOP_LIMIT * 3)
        except subprocess.TimeoutExpired:
            code = None
        out["stop_seconds"] = round(time.monotonic() - t0, 3)
        out["exit_code"] = code
        jobs.thread.join(RESULT_WAIT * 3)
        out["jobs"] = {"ok": jobs.ok, "wrong": jobs.wrong, "ended_by": jobs.ended_by,
                       "ended_typed": jobs.typed, "hung": jobs.thread.is_alive()}
        jobs.stop.set()
        out["held_context_intact"] = bytes(held.content) == held_bytes
        try:
            fresh = bytes(reader.load_layer_context(dim, layer).content)
            out["lookup_after_stop"] = "answered" if fresh == held_bytes else "wrong bytes"
        except ShmPoolError as exc:
            out["lookup_after_stop"] = f"typed {type(exc).__name__}"
        except Exception as exc:  # noqa: BLE001
            out["lookup_after_stop"] = f"untyped {type(exc).__name__}: {exc}"
        del held
        client.close()
        reader.close()
        deadline = time.monotonic() + 10
        while not all(_gone(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        out["workers_gone"] = all(_gone(w) for w in workers)
        text = log.read_text()
        lines = [ln for ln in text.splitlines() if "ERROR" in ln and "removed from /dev/shm" in ln]
        out["error_line"] = lines[0] if lines else None
        out["worker_restart_failures"] = text.count("exited with status 3")
        health = subprocess.run([*CLI, "health", name], capture_output=True, text=True, timeout=60)
        out["health_after"] = {"exit": health.returncode, "line": health.stderr.strip()[-300:]}
        try:
            with make_coordinator(name):
                out["name_free_again"] = True
        except Exception as exc:  # noqa: BLE001 - reported, the check fails
            out["name_free_again"] = f"{type(exc).__name__}: {exc}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    segments, semaphores = list_objects(name)
    out["leftovers_in_dev_shm"] = segments + semaphores
    return out


def _checks(r: dict[str, Any]) -> dict[str, bool]:
    error = r.get("error_line") or ""
    return {
        "coordinator_stopped_within_limit": r.get("exit_code") is not None and r["stop_seconds"] <= STOP_LIMIT,
        "serve_exit_status_1": r.get("exit_code") == 1,
        "error_names_removeipc_and_fix": "RemoveIPC" in error and "logind.conf" in error and "system user" in error,
        "workers_gone": bool(r.get("workers_gone")),
        "no_worker_restart_loop": r.get("worker_restart_failures") == 0,
        "jobs_right_then_typed_error": (r["jobs"]["ok"] > 0 and r["jobs"]["wrong"] == 0
                                        and not r["jobs"]["hung"] and r["jobs"]["ended_typed"]),
        "held_context_intact": bool(r.get("held_context_intact")),
        "lookup_after_stop_typed_or_right": str(r.get("lookup_after_stop")).startswith(("typed", "answered")),
        "health_says_not_running": r["health_after"]["exit"] == 1,
        "name_free_again": r.get("name_free_again") is True,
        "nothing_left_in_dev_shm": r["leftovers_in_dev_shm"] == [],
    }


def campaign_names(name: str, *, make_coordinator: Callable[[str], Any],
                   list_objects: Callable[[str], tuple[list[str], list[str]]],
                   rounds: tuple[str, ...] = ROUNDS) -> dict[str, Any]:
    """Every round of the module docstring, one after another under ``name``."""
    t0 = time.monotonic()
    results: dict[str, Any] = {}
    checks: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="chaos-names-") as tmp:
        for which in rounds:
            try:
                r = _round(name, which, Path(tmp), make_coordinator, list_objects)
            except Exception as exc:  # noqa: BLE001 - a round that could not run is a failed check
                results[which] = {"error": f"{type(exc).__name__}: {exc}"}
                checks[f"{which}_ran"] = False
                continue
            results[which] = r
            checks.update({f"{which}_{k}": v for k, v in _checks(r).items()})
    stops = [r["stop_seconds"] for r in results.values() if "stop_seconds" in r]
    return {"ok": all(checks.values()) and bool(checks), "checks": checks, "seconds": round(time.monotonic() - t0, 2),
            "stop_seconds_max": max(stops, default=None), "rounds": results}
