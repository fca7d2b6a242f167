"""The fork campaign of scripts/chaos.py: Readers and Clients inherited through ``fork()``.

A *holder* process (from chaos.py's fork server) attaches a Reader, connects a Client, takes a
context of the chaos dimension and checks it, then ``os.fork()``s children, while the
coordinator in chaos.py publishes a new generation of that dimension every few milliseconds (so
superseded generations are reclaimed and their blocks reused all the time). Two modes:

* ``alive``: the holder stays and goes on reading its context, looking layers up and submitting
  jobs with tags of its own, then waits for its children and shuts its client down.
* ``exit``: the holder closes its client and reader and exits right after forking.

Each child uses what it inherited for ``seconds``: it re-reads the inherited context (its bytes
must stay what the holder saw), looks layers up through the inherited Reader (each must be one
round's exact bytes, and stay so while held), and submits jobs through the inherited Client
(each result must be its own tag). shmpool may answer any of these with a typed ShmPoolError
(one that says to attach or connect again in the child); that is counted, not held against it.
A wrong byte, a wrong result, an untyped exception (a bare TimeoutError), a child that never
reports, or a holder whose own results, reads or shutdown suffer, fails the campaign.

Reports are JSON files in ``out_dir`` (``holder-PID.json``, ``child-PID.json``): a forked child
cannot rely on multiprocessing's queues, and a file written then renamed is whole or absent.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import shmpool
from shmpool.errors import ShmPoolError
from shmpool.substrate._proc import is_alive  # a zombie orphan (nobody reaps it here) is not alive

from _chaos_clients import CHAOS_DIMENSION, CHAOS_LAYERS, SLOW_JOB, round_of

__all__ = ["fork_holder", "campaign_fork"]

JOB_EVERY = 0.05        # seconds between a child's (or holder's) job submissions
RESULT_WAIT = 5.0       # a job not answered within this is lost (a bare TimeoutError: untyped)
CLOSE_WAIT = 10.0       # a close or shutdown that takes longer is counted as hung
HELD = 4                # contexts a child keeps and re-checks, besides the inherited one
MODES = ("alive", "exit")


class _Tally:
    """What one process saw; ``typed`` and ``untyped`` count errors by type."""

    def __init__(self) -> None:
        self.reads = self.wrong_bytes = self.lookups = self.jobs_ok = self.wrong_results = self.lost = 0
        self.typed: Counter[str] = Counter()
        self.untyped: Counter[str] = Counter()
        self.examples: list[str] = []
        self.close_hung: list[str] = []

    def error(self, what: str, exc: BaseException) -> None:
        kind = type(exc).__name__
        (self.typed if isinstance(exc, ShmPoolError) else self.untyped)[kind] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{what}: {kind}: {exc}"[:400])

    def wrong(self, what: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(what[:400])

    def as_dict(self) -> dict[str, Any]:
        return {"reads": self.reads, "wrong_bytes": self.wrong_bytes, "lookups": self.lookups,
                "jobs_ok": self.jobs_ok, "wrong_results": self.wrong_results, "lost": self.lost,
                "typed_errors": dict(self.typed), "untyped_errors": dict(self.untyped),
                "close_hung": self.close_hung, "examples": self.examples}


def _write(out_dir: Path, kind: str, doc: dict[str, Any]) -> None:
    path = out_dir / f"{kind}-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _bounded(tally: _Tally, what: str, fn: Callable[[], object]) -> None:
    """Run ``fn`` (a close or shutdown) in a thread; one that does not return in CLOSE_WAIT is hung."""
    box: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            box.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(CLOSE_WAIT)
    if th.is_alive():
        tally.close_hung.append(what)
    elif box:
        tally.error(what, box[0])


class _User:
    """One process's use of a Reader, a context it holds and a Client, each checked."""

    def __init__(self, reader: Any, client: Any, ctx: Any, expected: bytes, tally: _Tally, tag: str) -> None:
        self.reader, self.client, self.ctx, self.expected = reader, client, ctx, expected
        self.tally, self.tag = tally, tag
        self.held: list[tuple[Any, bytes]] = []
        self.reader_ok = self.client_ok = True  # False after a typed error: the object said "not here"
        self.ctx_ok = True
        self.n = 0

    def read_once(self, layer: int) -> None:
        t = self.tally
        if self.ctx_ok:
            try:
                got = bytes(self.ctx.content)
                t.reads += 1
                if got != self.expected:
                    t.wrong_bytes += 1
                    t.wrong(f"inherited context of layer {layer} changed: {got[:40]!r} != {self.expected[:40]!r}")
            except ShmPoolError as exc:
                t.error("inherited context", exc)
                self.ctx_ok = False
            except Exception as exc:  # noqa: BLE001 - counted by type
                t.error("inherited context", exc)
                self.ctx_ok = False
        for held, seen in list(self.held):
            try:
                got = bytes(held.content)
            except Exception as exc:  # noqa: BLE001 - typed or not, counted by type
                t.error("held context", exc)
                self.held.remove((held, seen))
                continue
            t.reads += 1
            if got != seen:
                t.wrong_bytes += 1
                t.wrong(f"a held context of layer {held.layer_id} changed")
        if not self.reader_ok:
            return
        lid = 1 + self.n % CHAOS_LAYERS
        try:
            fresh = self.reader.load_layer_context(CHAOS_DIMENSION, lid)
            content = bytes(fresh.content)
        except ShmPoolError as exc:
            t.error("lookup", exc)
            self.reader_ok = False
            return
        except Exception as exc:  # noqa: BLE001
            t.error("lookup", exc)
            self.reader_ok = False
            return
        t.lookups += 1
        if round_of(content, lid) is None:
            t.wrong_bytes += 1
            t.wrong(f"lookup of layer {lid} is no round's bytes: {content[:40]!r}")
        self.held.append((fresh, content))
        if len(self.held) > HELD:
            self.held.pop(0)

    def job_once(self, i: int) -> None:
        if not self.client_ok:
            return
        t = self.tally
        tag = f"{self.tag}-{i}"
        try:
            result = self.client.submit(SLOW_JOB, 0, tag, timeout=RESULT_WAIT).result(RESULT_WAIT)
        except ShmPoolError as exc:  # first: LockTimeout is a TimeoutError too
            t.error("job", exc)
            self.client_ok = False
            return
        except TimeoutError as exc:  # a bare one: the answer went elsewhere, or never came
            t.lost += 1
            t.error("job", exc)
            self.client_ok = False  # counted; the reads go on without waiting RESULT_WAIT each time
            return
        except Exception as exc:  # noqa: BLE001
            t.error("job", exc)
            self.client_ok = False
            return
        if result == tag:
            t.jobs_ok += 1
        else:
            t.wrong_results += 1
            t.wrong(f"job tagged {tag!r} answered {result!r}")

    def run(self, seconds: float, layer: int) -> None:
        """Reads on this thread, jobs on another: a job that never answers must not stop the reading."""
        end = time.monotonic() + seconds
        jobs = threading.Thread(target=self._jobs_until, args=(end,), daemon=True)
        jobs.start()
        while time.monotonic() < end:
            self.read_once(layer)
            self.n += 1
            time.sleep(0.005)
        jobs.join(RESULT_WAIT * 2 + 1)

    def _jobs_until(self, end: float) -> None:
        i = 0
        while time.monotonic() < end and self.client_ok:
            self.job_once(i)
            i += 1
            time.sleep(JOB_EVERY)

    def release(self) -> None:
        self.held.clear()
        self.ctx = None


def _child(user: _User, seconds: float, layer: int, out_dir: Path) -> None:
    doc: dict[str, Any] = {"role": "child", "parent": os.getppid()}
    try:
        user.tally = _Tally()  # the holder's counts so far are the holder's
        user.tag = f"child{os.getpid()}"
        user.run(seconds, layer)
        user.release()
        _bounded(user.tally, "child client.close()", user.client.close)
        _bounded(user.tally, "child reader.close()", user.reader.close)
    except BaseException as exc:  # noqa: BLE001 - a crash of the child is a finding, reported
        user.tally.error("child crashed", exc)
        doc["traceback"] = traceback.format_exc()[-2000:]
    doc.update(user.tally.as_dict())
    _write(out_dir, "child", doc)


def fork_holder(name: str, mode: str, children: int, seconds: float, out_dir: str) -> None:
    """A holder process (see the module docstring); writes holder-PID.json, its children child-PID.json."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = Path(out_dir)
    tally = _Tally()
    doc: dict[str, Any] = {"role": "holder", "mode": mode, "children": []}
    reader = shmpool.attach(name)
    client = shmpool.connect(name, timeout=RESULT_WAIT)
    layer = 1 + os.getpid() % CHAOS_LAYERS
    ctx = reader.load_layer_context(CHAOS_DIMENSION, layer)
    expected = bytes(ctx.content)
    doc["round_at_fork"] = round_of(expected, layer)
    user = _User(reader, client, ctx, expected, tally, f"holder{os.getpid()}")
    user.job_once(-1)  # its completion thread runs: the fork copies a client in use
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            try:
                _child(user, seconds, layer, out)
            finally:
                os._exit(0)
        doc["children"].append(pid)
    _write(out, "holder-pids", {"children": doc["children"]})  # for the campaign to reap, whatever happens next
    if mode == "alive":
        user.run(seconds, layer)
        deadline = time.monotonic() + seconds + 30
        for pid in doc["children"]:
            while time.monotonic() < deadline:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
                time.sleep(0.05)
        user.run(0.2, layer)  # once more, with every child gone
    user.release()
    _bounded(tally, "holder client.shutdown(wait=True)", lambda: client.shutdown(wait=True))
    _bounded(tally, "holder reader.close()", reader.close)
    doc.update(tally.as_dict())
    _write(out, "holder", doc)


# --------------------------------------------------------------------- the campaign (in chaos.py's process)

def _sum(docs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("reads", "wrong_bytes", "lookups", "jobs_ok", "wrong_results", "lost")
    out: dict[str, Any] = {k: sum(d.get(k, 0) for d in docs) for k in keys}
    typed: Counter[str] = Counter()
    untyped: Counter[str] = Counter()
    for d in docs:
        typed.update(d.get("typed_errors", {}))
        untyped.update(d.get("untyped_errors", {}))
    out["typed_errors"], out["untyped_errors"] = dict(typed), dict(untyped)
    out["close_hung"] = [h for d in docs for h in d.get("close_hung", [])]
    out["crashed"] = sum(1 for d in docs if "traceback" in d)
    out["examples"] = [e for d in docs for e in d.get("examples", [])][:8]
    return out


def campaign_fork(name: str, ctx: Any, *, coordinator: Callable[[], Any], publish: Callable[[Any, int], int],
                  holders: int, children: int, seconds: float, publish_every: float,
                  list_objects: Callable[[str], tuple[list[str], list[str]]]) -> dict[str, Any]:
    """Holders of both modes fork children under a publish loop; see the module docstring."""
    t0 = time.monotonic()
    results: dict[str, Any] = {}
    stop = threading.Event()
    fresh: dict[str, Any] = {"ok": False, "error": "not reached"}
    generations = [0]
    publish_errors: list[str] = []
    coord = coordinator()
    with tempfile.TemporaryDirectory(prefix="chaos-fork-") as tmp:
        out_dir = Path(tmp)
        try:
            coord.start()
            publish(coord, 0)

            def publisher() -> None:
                while not stop.wait(publish_every):
                    try:
                        publish(coord, generations[0] + 1)
                        generations[0] += 1
                    except Exception as exc:  # noqa: BLE001 - reported
                        publish_errors.append(f"{type(exc).__name__}: {exc}")

            pub = threading.Thread(target=publisher, daemon=True)
            pub.start()
            procs = {mode: [ctx.Process(target=fork_holder, args=(name, mode, children, seconds, tmp), daemon=False)
                            for _ in range(holders)] for mode in MODES}
            for mode in MODES:
                for p in procs[mode]:
                    p.start()
            for mode in MODES:
                for p in procs[mode]:
                    p.join(seconds * 2 + 60)
            # Children of exiting holders are orphans: their reports are the only sign of them.
            expected = holders * children * len(MODES)
            deadline = time.monotonic() + seconds + 30
            while len(list(out_dir.glob("child-*.json"))) < expected and time.monotonic() < deadline:
                time.sleep(0.1)
            stop.set()
            pub.join(10)
            fresh = _fresh_client(name)
            docs = [json.loads(p.read_text()) for p in out_dir.glob("*.json")]
            stragglers = [pid for d in docs if "children" in d and "role" not in d for pid in d["children"]
                          if is_alive(pid)]
            for pid in stragglers:
                os.kill(pid, signal.SIGKILL)
            by_pid = {int(p.stem.split("-")[-1]): json.loads(p.read_text()) for p in out_dir.glob("holder-[0-9]*.json")}
            for mode in MODES:
                holder_docs = [by_pid[p.pid] for p in procs[mode] if p.pid in by_pid]
                child_pids = {pid for d in holder_docs for pid in d["children"]}
                child_docs = [d for p, d in ((int(f.stem.split("-")[-1]), json.loads(f.read_text()))
                                             for f in out_dir.glob("child-*.json")) if p in child_pids]
                results[mode] = {
                    "holders": len(procs[mode]), "holders_reported": len(holder_docs),
                    "holder_exit_codes": [p.exitcode for p in procs[mode]],
                    "children": holders * children, "children_reported": len(child_docs),
                    "child": _sum(child_docs), "holder": _sum(holder_docs),
                }
            results["stragglers_killed"] = len(stragglers)
        finally:
            stop.set()
            coord.stop()
    segments, semaphores = list_objects(name)
    checks: dict[str, bool] = {}
    for mode in MODES:
        r = results.get(mode)
        if r is None:
            checks[f"{mode}_ran"] = False
            continue
        child, holder = r["child"], r["holder"]
        checks[f"{mode}_children_reported"] = r["children_reported"] == r["children"]
        # Reading on, or refusing with a typed error: either way the children used what they inherited.
        checks[f"{mode}_children_used_what_they_inherited"] = child["reads"] + sum(child["typed_errors"].values()) > 0
        checks[f"{mode}_no_wrong_bytes_in_children"] = child["wrong_bytes"] == 0
        checks[f"{mode}_no_wrong_results_in_children"] = child["wrong_results"] == 0
        checks[f"{mode}_children_errors_typed"] = not child["untyped_errors"] and child["crashed"] == 0
        checks[f"{mode}_children_close_promptly"] = not child["close_hung"]
        checks[f"{mode}_holders_reported"] = r["holders_reported"] == r["holders"] and all(
            c == 0 for c in r["holder_exit_codes"])
        checks[f"{mode}_holder_unaffected"] = (holder["wrong_bytes"] == 0 and holder["wrong_results"] == 0
                                               and holder["lost"] == 0 and not holder["typed_errors"]
                                               and not holder["untyped_errors"] and not holder["close_hung"]
                                               and holder["jobs_ok"] > 0)
    checks["publishing_went_on"] = generations[0] > 0 and not publish_errors
    checks["fresh_client_after"] = bool(fresh["ok"])
    checks["nothing_left_in_dev_shm"] = (segments, semaphores) == ([], [])
    return {"ok": all(checks.values()), "checks": checks, "seconds": round(time.monotonic() - t0, 2),
            "generations_published": generations[0], "publish_errors": publish_errors[:5],
            "fresh_client": fresh, **results,
            "leftovers_in_dev_shm": segments + semaphores}


def _fresh_client(name: str, jobs: int = 20) -> dict[str, Any]:
    """A client connected after all the forking: every answer its own (no channel shared with a ghost)."""
    try:
        with shmpool.connect(name, timeout=RESULT_WAIT) as client:
            futures = [client.submit(SLOW_JOB, 0, f"fresh-{i}") for i in range(jobs)]
            answers = [f.result(RESULT_WAIT) for f in futures]
    except Exception as exc:  # noqa: BLE001 - reported, and the check fails
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": answers == [f"fresh-{i}" for i in range(jobs)], "jobs": jobs}
