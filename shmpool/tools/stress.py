"""The stress engine behind ``shmpool stress``: many clients against live crystallization and dying workers.

A run owns its instance: it starts its own Coordinator, because publishing new generations and
SIGKILLing workers are things only the owning process can do. Then it spreads ``clients`` client
threads over a few spawned client processes (each with its own ``shmpool.connect``), and every
thread submits ``lookup`` and ``load_contexts`` jobs on random keys as fast as answers come back.
Every context that comes back is checked: its CRC32 (a failed ``verify()`` is a *torn read*), its
ids, and for the stress dimension its exact bytes. Meanwhile the coordinator process crystallizes
a new generation of the stress dimension every ``crystallize_every`` seconds and, with
``kill_workers``, SIGKILLs a random worker every ``KILL_EVERY`` seconds.

The verdict (:func:`run_stress` returns it as a JSON-able dict) counts what must never happen:
torn or wrong reads, lost jobs, leaked allocations, leftovers in /dev/shm.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import TimeoutError as FuturesTimeout
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
from ..substrate._log import logger

from shmpool.data.context import LoadedContext
from shmpool.jobs.client import Client
from shmpool.errors import AttachError, JobError, ShmPoolError
from shmpool.substrate.names import list_objects

from ..coordinator import Coordinator
from ..data.sample import SAMPLE
if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

from .stress_report import BIN_EDGES_US, OPS, histogram, percentiles, render_report, windows, write_outputs

__all__ = ["run_stress", "leak_check", "random_request", "checked_contexts", "render_report", "write_outputs", "stress_layer", "StressFailed",
           "STRESS_DIMENSION"]

STRESS_DIMENSION = 100
STRESS_LAYERS = 200
KILL_EVERY = 2.0         # seconds between worker kills; the first comes after half of it
LOST_AFTER = 30.0        # a job unanswered this long counts as lost (answers take ~1 ms)
MAX_PROCESSES = 4        # client processes; threads inside them make up the client count
LOOKUP_SHARE = 0.8       # the rest of the operations are load_contexts of 5-20 steps
PATH_STEPS = (5, 20)


class StressFailed(ShmPoolError):
    """The run itself could not be carried out (a client process failed to start or died)."""

    def __init__(self, *, name: str, reason: str) -> None:
        super().__init__(f"stress run on {name!r} failed: {reason}", name=name, reason=reason)


# --------------------------------------------------------------------- the stress dimension

def stress_layer(layer_id: int, round_: int) -> bytes:
    """Content of stress layer ``layer_id`` as crystallized in round ``round_``.

    A header names both, and the rest is derived from the header, so a reader can recompute the
    exact bytes: that catches a misrouted or mixed-up layer, which a CRC32 alone would not.
    """
    head = f"stress layer {layer_id} round {round_}\n".encode()
    seed = hashlib.blake2b(head, digest_size=64).digest()
    size = 64 + (layer_id * 97) % 4000
    return head + (seed * (size // 64 + 1))[:size]


def _stress_layer_ok(content: memoryview, layer_id: int) -> bool:
    head = bytes(content[:64]).split(b"\n", 1)[0].split()
    if len(head) != 5 or head[:2] != [b"stress", b"layer"] or int(head[2]) != layer_id:
        return False
    return content == stress_layer(layer_id, int(head[4]))


def _publish_stress_dimension(coord: Coordinator, round_: int) -> int:
    proto = coord.create_proto_dimension(STRESS_DIMENSION, "stress")
    for layer in range(1, STRESS_LAYERS + 1):
        proto.add_layer(layer, stress_layer(layer, round_), frequency=layer / STRESS_LAYERS,
                        keywords=("stress",))
    return coord.crystallize(STRESS_DIMENSION)


# --------------------------------------------------------------------- client processes

class _ThreadTally:
    __slots__ = ("ops", "errors", "examples", "torn", "wrong", "lost", "latencies", "ends")

    def __init__(self) -> None:
        self.ops = self.torn = self.wrong = self.lost = 0
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []
        self.latencies: dict[str, list[int]] = {op: [] for op in OPS}
        # CLOCK_MONOTONIC at completion: one clock for every process on Linux, so the parent
        # can put each operation in its 100 ms window next to its kills and publishes.
        self.ends: dict[str, list[int]] = {op: [] for op in OPS}


def _error_type(exc: BaseException) -> str:
    return f"JobError[{exc.error_type}]" if isinstance(exc, JobError) else type(exc).__name__


def random_request(rng: random.Random, keys: dict[int, list[int]],
                   lookup_share: float) -> tuple[str, tuple[Any, ...], list[tuple[int, int]]]:
    """One built-in job on random keys: (job name, its arguments, the (dimension, layer) steps it must return).

    A ``lookup`` with probability ``lookup_share``, else a ``load_contexts`` of PATH_STEPS steps.
    """
    dims = list(keys)
    if rng.random() < lookup_share:
        dim = rng.choice(dims)
        step = (dim, rng.choice(keys[dim]))
        return "lookup", step, [step]
    path = [(d, rng.choice(keys[d])) for d in rng.choices(dims, k=rng.randint(*PATH_STEPS))]
    return "load_contexts", ([list(s) for s in path],), path


def checked_contexts(result: Any, op: str, expect: list[tuple[int, int]], tally: Any) -> Iterator[LoadedContext]:
    """The contexts of a ``random_request`` answer whose CRC32 holds; wrong ids and torn layers counted.

    ``tally`` needs ``wrong`` and ``torn`` counters; the caller checks each yielded context's bytes
    against what its own layers must hold.
    """
    contexts = [result] if op == "lookup" else result.contexts
    if [(c.dimension_id, c.layer_id) for c in contexts] != expect:
        tally.wrong += 1
    for ctx in contexts:
        if ctx.verify():
            yield ctx
        else:
            tally.torn += 1


def _client_thread(client: Client, keys: dict[int, list[int]], seed: int, deadline: list[float],
                   tally: _ThreadTally) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline[0]:
        op, args, expect = random_request(rng, keys, LOOKUP_SHARE)
        future = None
        t0 = time.perf_counter_ns()
        try:
            # submit() rather than client.lookup(): the same built-in jobs, but a future we can
            # cancel when it counts as lost, and a bounded wait for a free slot.
            future = client.submit(op, *args, timeout=LOST_AFTER)
            result = future.result(LOST_AFTER)
        except ShmPoolError as exc:  # before FuturesTimeout: LockTimeout is a TimeoutError too
            tally.errors[_error_type(exc)] += 1
            if len(tally.examples) < 5:
                tally.examples.append(f"{op}{args}: {exc}")
            if isinstance(exc, AttachError):
                break  # the client is broken for good; spinning on it would only count noise
            continue
        except FuturesTimeout:
            tally.lost += 1
            if future is not None:
                future.cancel()
            continue
        tally.latencies[op].append(time.perf_counter_ns() - t0)
        tally.ends[op].append(time.monotonic_ns())
        tally.ops += 1
        ctx = None
        for ctx in checked_contexts(result, op, expect, tally):
            if ctx.dimension_id == STRESS_DIMENSION and not _stress_layer_ok(ctx.content, ctx.layer_id):
                tally.wrong += 1
        del result, ctx  # drop the views at once: they pin their generation


def _client_process(name: str, threads: int, seed: int, duration: float, start: Event, stop: Event,
                    counters: Any, base: int, results: Queue[Any]) -> None:
    """Entry point of one spawned client process: ``threads`` client threads on one Client."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a run ends
    import shmpool

    try:
        client = shmpool.connect(name)
        reader = client.reader
        keys = {dim: reader.layer_ids(dim) for dim in reader.dimensions()}
    except BaseException as exc:
        results.put(("fatal", os.getpid(), f"{type(exc).__name__}: {exc}"))
        return
    tallies = [_ThreadTally() for _ in range(threads)]
    try:
        results.put(("ready", os.getpid(), None))
        if not start.wait(120) or stop.is_set():
            return
        t0 = time.monotonic()
        deadline = [t0 + duration]
        pool = [threading.Thread(target=_client_thread, args=(client, keys, seed * 1000 + i, deadline, tally),
                                 daemon=True) for i, tally in enumerate(tallies)]
        for th in pool:
            th.start()
        for th in pool:
            while th.is_alive():
                if stop.is_set():
                    deadline[0] = 0.0
                # Each process writes only its own three counters, so they need no lock.
                counters[base:base + 3] = [sum(t.ops for t in tallies),
                                           sum(sum(t.errors.values()) + t.lost for t in tallies),
                                           sum(t.torn + t.wrong for t in tallies)]
                th.join(0.1)
        elapsed = time.monotonic() - t0
    finally:
        client.close()
    errors: Counter[str] = Counter()
    for t in tallies:
        errors.update(t.errors)
    results.put(("result", os.getpid(), {
        "elapsed": elapsed, "ops": sum(t.ops for t in tallies), "errors": dict(errors),
        "examples": [e for t in tallies for e in t.examples][:10],
        "torn": sum(t.torn for t in tallies), "wrong": sum(t.wrong for t in tallies),
        "lost": sum(t.lost for t in tallies),
        "latencies": {op: np.fromiter((x for t in tallies for x in t.latencies[op]), dtype=np.int64).tobytes()
                      for op in OPS},
        "ends": {op: np.fromiter((x for t in tallies for x in t.ends[op]), dtype=np.int64).tobytes()
                 for op in OPS},
    }))


# --------------------------------------------------------------------- the run

def run_stress(name: str, *, clients: int = 128, duration: float = 10.0, crystallize_every: float = 1.0,
               kill_workers: bool = False, workers: int | None = None, data_dir: str | os.PathLike[str] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Create instance ``name``, hammer it for ``duration`` seconds, stop it; return the verdict.

    Blocks for about ``duration`` plus start-up (~1 s) and shut-down. ``crystallize_every=0``
    publishes no new generations; ``progress`` shows a live bar on stderr (nothing is printed
    without it). Raises InstanceExists if ``name`` is taken, StressFailed if a client process
    cannot run. Whatever happens, the coordinator is stopped before this returns or raises.
    """
    if clients < 1 or duration <= 0 or crystallize_every < 0:
        raise ValueError(f"need clients >= 1, duration > 0, crystallize_every >= 0; got {clients}, "
                         f"{duration}, {crystallize_every}")
    ctx = mp.get_context("spawn")
    nproc = min(MAX_PROCESSES, clients)
    threads = [clients // nproc + (i < clients % nproc) for i in range(nproc)]
    counters = ctx.Array("q", 3 * nproc, lock=False)
    start, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    # Its clients read the sample's dimensions: without a data folder, the sample is what it serves.
    coord = Coordinator(name, data_dir=data_dir if data_dir is not None else SAMPLE, workers=workers)
    procs: list[BaseProcess] = []
    live = None
    try:
        coord.start()
        if coord.worker_count < 1:
            raise ValueError("a stress run needs at least one worker")
        generations = [_publish_stress_dimension(coord, 0)]
        procs = [ctx.Process(target=_client_process, name=f"stress-client-{i}",
                             args=(name, n, i, duration, start, stop, counters, 3 * i, results))
                 for i, n in enumerate(threads)]
        for p in procs:
            p.start()
        _wait_ready(name, procs, results)
        live = _Live(progress, duration, counters)
        start.set()
        t0_ns = time.monotonic_ns()
        t0 = t0_ns / 1e9
        events = _drive(coord, t0, duration, crystallize_every, kill_workers, generations, live)
        reports = _collect(name, procs, results, live)
        wall = time.monotonic() - t0
        leak = leak_check(coord)
        final = coord.stats()
    except BaseException:
        stop.set()
        start.set()  # children still waiting for the start see `stop` and leave at once
        raise
    finally:
        if live is not None:
            live.close()
        for p in procs:
            p.join(5)
            if p.is_alive():
                logger.warning("stress client pid {} did not exit; terminating it", p.pid)
                p.terminate()
                p.join(5)
        coord.stop()
    segments, semaphores = list_objects(name)
    return _verdict(name, clients, nproc, duration, crystallize_every, kill_workers, coord.worker_count,
                    reports, wall, generations, events, t0_ns, leak, final, segments + semaphores)


def _wait_ready(name: str, procs: list[BaseProcess], results: Queue[Any], timeout: float = 120.0) -> None:
    ready = 0
    deadline = time.monotonic() + timeout
    while ready < len(procs):
        try:
            kind, pid, detail = results.get(timeout=0.1)
        except Exception:  # queue.Empty; the module is not imported for one name
            dead = [p for p in procs if p.exitcode is not None]
            if dead:
                raise StressFailed(name=name, reason=f"client process {dead[0].pid} exited with "
                                                     f"code {dead[0].exitcode} before it was ready") from None
            if time.monotonic() > deadline:
                raise StressFailed(name=name, reason=f"client processes not ready after {timeout} s") from None
            continue
        if kind == "fatal":
            raise StressFailed(name=name, reason=f"client process {pid} could not connect: {detail}")
        ready += 1


def _drive(coord: Coordinator, t0: float, duration: float, every: float, kill: bool,
           generations: list[int], live: "_Live") -> dict[str, list[int]]:
    """The coordinator's side of the run: crystallize and kill on schedule until ``duration``.

    Returns when each kill and each publication happened (monotonic ns)."""
    events: dict[str, list[int]] = {"kills": [], "publishes": []}
    next_gen = t0 + every if every else float("inf")
    next_kill = t0 + KILL_EVERY / 2 if kill else float("inf")
    rng = random.Random(0)
    end = t0 + duration
    while (now := time.monotonic()) < end:
        if now >= next_gen:
            generations.append(_publish_stress_dimension(coord, len(generations)))
            events["publishes"].append(time.monotonic_ns())
            next_gen = max(next_gen + every, time.monotonic())
        if now >= next_kill:
            pids = coord.stats()["workers"]["pids"]
            victim = rng.choice(pids)
            if coord.kill_worker(victim, why="the stress test"):  # reported as ours, not as an OOM kill
                events["kills"].append(time.monotonic_ns())
            else:
                logger.debug("worker {} was already gone when its kill came", victim)
            next_kill = now + KILL_EVERY
        live.update(generation=generations[-1], kills=len(events["kills"]))
        time.sleep(max(0.0, min(0.05, next_gen - now, next_kill - now, end - now)))
    return events


def _collect(name: str, procs: list[BaseProcess], results: Queue[Any], live: "_Live") -> list[dict[str, Any]]:
    reports: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + LOST_AFTER + 60
    while len(reports) < len(procs):
        try:
            kind, pid, detail = results.get(timeout=0.1)
        except Exception:  # queue.Empty
            live.update()
            gone = [p for p in procs if p.exitcode is not None and p.pid not in reports]
            if gone or time.monotonic() > deadline:
                why = (f"client process {gone[0].pid} exited with code {gone[0].exitcode} without a report"
                       if gone else "client processes did not report in time")
                raise StressFailed(name=name, reason=why) from None
            continue
        if kind == "result":
            reports[pid] = detail
    return list(reports.values())


def leak_check(coord: Coordinator, patience: float = 3.0) -> dict[str, Any]:
    """Allocations beyond one per published dimension, after clients left and reclaim ran.

    Superseded generations still pinned by a worker's reader (it holds the generation it last
    looked at until its next lookup) are tracked by the publisher and freed at stop: they are
    reported, not counted as leaks. Allocations of dead processes are swept once a second, hence
    the patience.
    """
    deadline = time.monotonic() + patience
    while True:
        coord.reclaim()
        st = coord.stats()
        leaked = st["live_allocations"] - st["dimensions"] - st["superseded_pending"]
        if leaked <= 0 or time.monotonic() > deadline:
            return {"leaked_blocks": leaked, "live_allocations": st["live_allocations"],
                    "dimensions": st["dimensions"], "superseded_pending": st["superseded_pending"],
                    "used_bytes": st["used_bytes"]}
        time.sleep(0.05)


def _verdict(name: str, clients: int, nproc: int, duration: float, every: float, kill: bool, nworkers: int,
             reports: list[dict[str, Any]], wall: float, generations: list[int], events: dict[str, list[int]],
             t0_ns: int, leak: dict[str, Any], final: dict[str, Any], leftovers: list[str]) -> dict[str, Any]:
    def gather(key: str) -> dict[str, np.ndarray]:
        return {op: np.concatenate([np.frombuffer(r[key][op], dtype=np.int64) for r in reports]) for op in OPS}

    latency_ns, end_ns = gather("latencies"), gather("ends")
    latency = {op: percentiles(latency_ns[op]) for op in OPS}
    hist = {op: histogram(latency_ns[op]) for op in OPS}
    errors: Counter[str] = Counter()
    for r in reports:
        errors.update(r["errors"])
    ops = sum(r["ops"] for r in reports)
    elapsed = max(r["elapsed"] for r in reports)
    out = {
        "name": name, "clients": clients, "client_processes": nproc, "workers": nworkers,
        "duration_s": duration, "elapsed_s": round(elapsed, 3), "wall_s": round(wall, 3),
        "crystallize_every_s": every, "kill_workers": kill,
        "total_ops": ops, "throughput_ops_s": round(ops / elapsed, 1) if elapsed else 0.0,
        "latency_us": latency,
        "errors": dict(errors), "error_examples": [e for r in reports for e in r["examples"]][:10],
        "torn_reads": sum(r["torn"] for r in reports), "wrong_content": sum(r["wrong"] for r in reports),
        "lost_jobs": sum(r["lost"] for r in reports),
        "generations_published": len(generations), "last_generation": generations[-1],
        "worker_kills": len(events["kills"]), "worker_deaths": len(final.get("workers", {}).get("deaths", [])),
        "jobs": final.get("jobs"), **leak, "leftover_objects": leftovers,
        "histogram": {"edges_us": [round(float(e), 3) for e in BIN_EDGES_US], **hist},
        "timeseries": windows(latency_ns, end_ns, t0_ns, events),
    }
    out["ok"] = (ops > 0 and not errors and out["torn_reads"] == 0 and out["wrong_content"] == 0
                 and out["lost_jobs"] == 0 and out["leaked_blocks"] == 0 and not leftovers)
    return out


class _Live:
    """The rich progress bar on stderr (or nothing, when progress is off)."""

    def __init__(self, enabled: bool, duration: float, counters: Any) -> None:
        self._counters = counters
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._duration = duration
        self._t0 = time.monotonic()
        self._fields: dict[str, Any] = {"generation": 1, "kills": 0}
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]stress"), BarColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[ops]:>9,} ops  {task.fields[rate]:>8,.0f} ops/s  "
                           "{task.fields[errors]} errors  {task.fields[bad]} torn/wrong  "
                           "gen {task.fields[generation]}  {task.fields[kills]} kills"),
                console=Console(stderr=True))
            self._task = self._progress.add_task("stress", total=duration, ops=0, rate=0.0, errors=0, bad=0,
                                                 **self._fields)
            self._progress.start()

    def update(self, **fields: Any) -> None:
        if self._progress is None or self._task is None:
            return
        self._fields.update(fields)
        c = list(self._counters)
        ops, errors, bad = sum(c[0::3]), sum(c[1::3]), sum(c[2::3])
        elapsed = time.monotonic() - self._t0
        self._progress.update(self._task, completed=min(elapsed, self._duration), ops=ops,
                              rate=ops / elapsed if elapsed else 0.0, errors=errors, bad=bad, **self._fields)

    def close(self) -> None:
        if self._progress is not None:
            self.update()
            self._progress.stop()
            self._progress = None
