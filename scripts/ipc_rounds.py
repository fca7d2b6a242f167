"""shmpool's job path against the IPC peers, interleaved in rounds: ``bench_jobs.py``'s ``ipc`` section.

Every system runs in a client process of its own (so its client CPU is its own, and a peer that
crashes takes nothing else down), started once and asked for one measurement per round; each
round visits every system, in an order rotated by one per round, so that a VM's drift lands on
all of them alike. The summary is the median over rounds, and each round's ratios to
``multiprocessing.Pipe`` (measured in the same round) with their median.

One measurement: ``warmup`` round trips, then ``n_lat`` closed-loop round trips against one
worker (p50, p99, and the CPU per job of the client process and of the worker processes), then
``n_pipe`` requests with ``window`` in flight from the one client (2 workers where the system
has several; the same single worker otherwise), in requests per second.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np

import benchlib
import ipc_peers
import ipc_shmpool

SCRIPTS = Path(__file__).resolve().parent
CHILD_TIMEOUT = 120.0  # seconds for one measurement or a start; then the system is dropped
SHMPOOL = ("shmpool Client.call", "shmpool Client.submit().result()", "shmpool Client.map",
           "shmpool low-latency client")
SYSTEMS = (*ipc_peers.PEERS, *SHMPOOL)
PIPELINED_SHMPOOL = {"shmpool Client.submit().result()", "shmpool Client.map"}  # on the 2-worker coordinator
BASELINE = "multiprocessing.Pipe"
MAP_CHUNKSIZE = 16


class Skip(Exception):
    """This system cannot run here (a missing package, a missing feature): recorded, not an error."""


class System:
    """What a client process measures: a round-trip peer, a pipelined peer, either may be absent."""

    def __init__(self, lat, pipe=None, *, pipe_workers: int = 1, pipe_reason: str | None = None,
                 other_pids: dict | None = None, map_peer=None, map_chunksize=None, notes=None) -> None:
        self.lat, self.pipe, self.pipe_workers, self.pipe_reason = lat, pipe, pipe_workers, pipe_reason
        self.other_pids = other_pids or {}
        self.map_peer, self.map_chunksize = map_peer, map_chunksize
        self.notes = notes or []

    def close(self) -> None:
        for peer in {id(p): p for p in (self.lat, self.pipe, self.map_peer) if p is not None}.values():
            try:
                peer.close()
            except Exception as exc:  # cleanup goes on; the reason is kept
                print(f"closing {type(peer).__name__}: {exc!r}", file=sys.stderr)


def _make_system(name: str, spec: dict) -> System:
    if name in ipc_peers.PEERS:
        cls, pipe_workers, reason = ipc_peers.PEERS[name]
        try:
            lat = cls(1)
        except ImportError as exc:
            raise Skip(f"not installed ({exc}); pip install '.[bench]'") from None
        pipe = None
        if reason is None:
            pipe = lat if pipe_workers == 0 else cls(pipe_workers)
        return System(lat, pipe, pipe_workers=pipe_workers or 1, pipe_reason=reason)
    if name not in SHMPOOL:
        raise KeyError(f"no system named {name!r}")
    lat_name, lat_pids = spec["lat"]
    coordinator = {"coordinator": [spec["coordinator_pid"]]}
    peer = ipc_shmpool.ShmpoolPeer
    if name == "shmpool Client.call":
        return System(peer(lat_name, lat_pids, via_call=True), None, other_pids=coordinator,
                      pipe_reason="call() waits for its own reply: pipelining is the submit row")
    pipe_name, pipe_pids = spec["pipe"]  # _run starts it when a system below is asked for
    if name == "shmpool Client.submit().result()":
        return System(peer(lat_name, lat_pids, via_call=False), peer(pipe_name, pipe_pids, via_call=False),
                      pipe_workers=2, other_pids=coordinator)
    if name == "shmpool Client.map":
        why = ipc_shmpool.map_chunksize()
        return System(None, None, other_pids=coordinator, map_peer=peer(pipe_name, pipe_pids, via_call=False),
                      map_chunksize=MAP_CHUNKSIZE if why is None else None,
                      pipe_reason="map is measured as items/s", notes=[] if why is None else [why])
    options, how = ipc_shmpool.low_latency_option()
    if options is None or "spin" not in spec:
        raise Skip(how)
    spin_name, spin_pids = spec["spin"]
    return System(peer(spin_name, spin_pids, via_call=True, options=options), None,
                  other_pids=coordinator, notes=[how],
                  pipe_reason="spinning buys latency for call(); pipelined throughput is the submit row")


# ----------------------------------------------------------------------------- measuring (client process)

def _cpu_ns(pids) -> int | None:
    """CPU time so far of processes ``pids``, all their threads (ns, from /proc schedstat)."""
    total = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as fh:
                    total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
    return total


def _per_job(before: int | None, after: int | None, jobs: int) -> float | None:
    if before is None or after is None:
        return None
    return round((after - before) / jobs / 1000, 2)


class _Cpu:
    """CPU per job of this process, the workers and any other processes over one timed batch."""

    def __init__(self, workers, others: dict) -> None:
        self.workers, self.others = list(workers), others

    def __enter__(self):
        self.c0, self.w0 = time.process_time_ns(), _cpu_ns(self.workers)
        self.o0 = {k: _cpu_ns(v) for k, v in self.others.items()}
        return self

    def __exit__(self, *exc) -> None:
        self.c1, self.w1 = time.process_time_ns(), _cpu_ns(self.workers)
        self.o1 = {k: _cpu_ns(v) for k, v in self.others.items()}

    def row(self, jobs: int, prefix: str = "") -> dict:
        out = {f"{prefix}client_cpu_us_per_job": _per_job(self.c0, self.c1, jobs),
               f"{prefix}worker_cpu_us_per_job": _per_job(self.w0, self.w1, jobs)}
        for k in self.others:
            out[f"{prefix}{k}_cpu_us_per_job"] = _per_job(self.o0[k], self.o1[k], jobs)
        return out


def _measure(s: System, n_lat: int, n_pipe: int, window: int, warmup: int) -> dict:
    row: dict = {"notes": list(s.notes)}
    clock = benchlib.clock
    if s.lat is not None:
        for x in range(warmup):
            if s.lat.call(x) != x + 1:
                raise RuntimeError("wrong reply in warm-up")
        lat = np.empty(n_lat, dtype=np.int64)
        wrong = 0
        call = s.lat.call
        with _Cpu(s.lat.pids, s.other_pids) as cpu:
            for i in range(n_lat):
                t0 = clock()
                y = call(i)
                lat[i] = clock() - t0
                wrong += y != i + 1
        if wrong:
            raise RuntimeError(f"{wrong} wrong replies of {n_lat}")
        p = benchlib.percentiles(lat)
        row.update({"p50_us": p["median_us"], "p99_us": p["p99_us"], "mean_us": p["mean_us"], "n": n_lat,
                    "workers": len(s.lat.pids), **cpu.row(n_lat)})
    if s.pipe is not None:
        ipc_peers.run_window(s.pipe, max(warmup, 2 * window), window)  # also starts on-demand workers
        with _Cpu(s.pipe.pids, s.other_pids) as cpu:
            t0 = clock()
            ipc_peers.run_window(s.pipe, n_pipe, window)
            wall = clock() - t0
        row.update({"pipelined_req_per_s": round(n_pipe / wall * 1e9), "pipelined_window": window,
                    "pipelined_workers": len(s.pipe.pids), **cpu.row(n_pipe, "pipelined_")})
    elif s.map_peer is not None:
        s.map_peer.map_items(max(warmup, 2 * window), s.map_chunksize)
        with _Cpu(s.map_peer.pids, s.other_pids) as cpu:
            t0 = clock()
            s.map_peer.map_items(n_pipe, s.map_chunksize)
            wall = clock() - t0
        row.update({"map_items_per_s": round(n_pipe / wall * 1e9), "map_chunksize": s.map_chunksize,
                    "map_workers": len(s.map_peer.pids), **cpu.row(n_pipe, "map_")})
    for peer in (s.lat, s.pipe):
        if hasattr(peer, "counters"):
            row.update(peer.counters())
    if s.pipe is None and s.pipe_reason:
        row["pipelined"] = f"not measured: {s.pipe_reason}"
    return row


def client_main(name: str, spec: dict, conn) -> None:
    """A system's client process: build it, say ready, measure on each request, close on stop."""
    benchlib.raise_on_sigterm()
    per_round = name in ipc_peers.PER_ROUND
    system = None
    try:
        try:
            system = _make_system(name, spec)
        except Skip as exc:
            conn.send(("skipped", str(exc)))
            return
        if per_round:  # proved it starts; built again inside each round
            system.close()
            system = None
        conn.send(("ready", None))
        while True:
            cmd, params = conn.recv()
            if cmd == "stop":
                break
            current = system or _make_system(name, spec)
            try:
                row = _measure(current, **params)
            finally:
                if per_round:
                    current.close()
            conn.send(("row", row))
    except BaseException as exc:  # reported to the main process, which records it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        if system is not None:
            system.close()


# ----------------------------------------------------------------------------- orchestrating (main process)

def _receive(conn, proc, timeout: float):
    if not conn.poll(timeout):
        return "error", f"no answer within {timeout:.0f} s"
    try:
        return conn.recv()
    except EOFError:
        proc.join(5)
        return "error", f"client process died (exit code {proc.exitcode})"


def _start_clients(spec: dict, systems) -> tuple[dict, dict]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    live, skipped, started = {}, {}, {}
    for name in systems:  # all at once: start-up is mostly imports, and both cores can do them
        missing = _missing_package(name)
        if missing is not None:
            skipped[name] = f"not installed (No module named {missing!r}); pip install '.[bench]'"
            continue
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=client_main, args=(name, spec, theirs), name=f"bench-jobs-client-{name}")
        proc.start()
        theirs.close()
        started[name] = (proc, ours)
    for name, (proc, ours) in started.items():
        kind, what = _receive(ours, proc, CHILD_TIMEOUT)
        if kind == "ready":
            live[name] = (proc, ours)
            continue
        skipped[name] = what if kind == "skipped" else f"failed to start: {what}"
        _stop(proc, ours)
    return live, skipped


def _missing_package(name: str) -> str | None:
    """The optional package system ``name`` needs if it is not installed here, else None."""
    import importlib.util

    module = ipc_peers.REQUIRES.get(name)
    return module if module is not None and importlib.util.find_spec(module) is None else None


def _stop(proc, conn) -> None:
    try:
        conn.send(("stop", None))
    except OSError:
        pass
    proc.join(15)
    if proc.exitcode is None:
        proc.terminate()
        proc.join(5)
    conn.close()


def run(tmp: Path, *, rounds: int, n_lat: int, n_pipe: int, window: int, warmup: int,
        systems=SYSTEMS) -> dict:
    """Start two coordinators (1 and 2 workers), every system's client, run the rounds; the section."""
    # shmpool workers import the job (ipc_peers.shmpool_inc) by name: they need this folder.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), saved]))
    try:
        return _run(tmp, rounds, n_lat, n_pipe, window, warmup, systems)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _run(tmp: Path, rounds: int, n_lat: int, n_pipe: int, window: int, warmup: int, systems) -> dict:
    from shmpool.coordinator import Coordinator

    empty = tmp / "ipc-no-data"
    empty.mkdir()
    jobs = {ipc_shmpool.JOB: ipc_peers.shmpool_inc}
    t_start = time.perf_counter()
    order: list[list[str]] = []
    per_round: dict[str, list] = {}
    failures: dict[str, str] = {}
    spin = ipc_shmpool.low_latency_option()[0] is not None
    with contextlib.ExitStack() as stack:
        # The 2-worker and the spinning coordinator only if an asked-for system uses them (the
        # smoke test of a failing system asks for two systems, one of them on the 1-worker one).
        c1 = stack.enter_context(Coordinator(benchlib.instance_name("bench-jobs-ipc1"), data_dir=empty,
                                             workers=1, jobs=jobs))
        spec = {"lat": (c1.name, c1._pool.pids()), "coordinator_pid": os.getpid()}
        if set(systems) & PIPELINED_SHMPOOL:
            c2 = stack.enter_context(Coordinator(benchlib.instance_name("bench-jobs-ipc2"), data_dir=empty,
                                                 workers=2, jobs=jobs))
            spec["pipe"] = (c2.name, c2._pool.pids())
        if spin and "shmpool low-latency client" in systems:
            c3 = stack.enter_context(Coordinator(benchlib.instance_name("bench-jobs-ipc3"), data_dir=empty,
                                                 workers=1, jobs=jobs, worker_spin_us=ipc_shmpool.SPIN_US))
            spec["spin"] = (c3.name, c3._pool.pids())
        live, skipped = _start_clients(spec, systems)
        try:
            names = list(live)
            params = {"n_lat": n_lat, "n_pipe": n_pipe, "window": window, "warmup": warmup}
            for r in range(rounds):
                turn = names[r % len(names):] + names[:r % len(names)] if names else []
                order.append(turn)
                for name in turn:
                    if name in failures:
                        continue
                    proc, conn = live[name]
                    conn.send(("measure", params))
                    kind, what = _receive(conn, proc, CHILD_TIMEOUT)
                    if kind == "row":
                        per_round.setdefault(name, []).append({"round": r, **what})
                    else:
                        failures[name] = f"round {r}: {what}"
        finally:
            for proc, conn in live.values():
                _stop(proc, conn)
    return _summary(systems, per_round, skipped, failures, order, params, time.perf_counter() - t_start)


# ----------------------------------------------------------------------------- summary

FIELDS = ("p50_us", "p99_us", "client_cpu_us_per_job", "worker_cpu_us_per_job", "coordinator_cpu_us_per_job",
          "pipelined_req_per_s", "pipelined_client_cpu_us_per_job", "pipelined_worker_cpu_us_per_job",
          "map_items_per_s")
# Each a system's figure over Pipe's in the same round: > 1 is slower (latency, CPU) or faster (req/s).
RATIOS = {"p50_vs_pipe": "p50_us", "p99_vs_pipe": "p99_us", "cpu_client_vs_pipe": "client_cpu_us_per_job",
          "cpu_worker_vs_pipe": "worker_cpu_us_per_job", "pipelined_vs_pipe": "pipelined_req_per_s"}


def _median(values):
    values = [v for v in values if v is not None]
    return round(float(np.median(values)), 2) if values else None


def _summary(systems, per_round, skipped, failures, order, params, seconds) -> dict:
    base = {row["round"]: row for row in per_round.get(BASELINE, [])}
    out = {}
    for name in systems:
        if name in skipped:
            out[name] = {"skipped": skipped[name]}
            continue
        rows = per_round.get(name, [])
        entry: dict = {"rounds": len(rows)}
        if name in failures:
            entry["failed"] = failures[name]
        if rows:
            entry["median"] = {f: _median(r.get(f) for r in rows) for f in FIELDS if any(f in r for r in rows)}
            ratios = {}
            for key, field in RATIOS.items():
                per = [r[field] / base[r["round"]][field]
                       for r in rows if r.get(field) and r["round"] in base and base[r["round"]].get(field)]
                if per:
                    ratios[key] = {"median": _median(per), "per_round": [round(v, 3) for v in per]}
            entry["ratios_to_pipe"] = ratios
            for key in ("workers", "pipelined_workers", "pipelined", "map_chunksize", "map_workers"):
                if key in rows[-1]:
                    entry[key] = rows[-1][key]
            notes = rows[-1].get("notes")
            if notes:
                entry["notes"] = notes
            entry["per_round"] = [{k: v for k, v in r.items() if k != "notes"} for r in rows]
        out[name] = entry
    return {"config": {**params, "rounds": len(order), "baseline": BASELINE, "map_chunksize": MAP_CHUNKSIZE},
            "order_per_round": order, "systems": out, "seconds": round(seconds, 1)}


def _fmt(v, digits=1) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def markdown(section: dict, machine: dict | None = None) -> str:
    """The section as a markdown table (medians of rounds; ratios are medians of per-round ratios)."""
    cfg = section["config"]
    lines = [f"Job round trip, one client process, a tiny request (x -> x + 1); medians of {cfg['rounds']} "
             f"interleaved rounds of {cfg['n_lat']} round trips (1 worker) and {cfg['n_pipe']} pipelined "
             f"requests ({cfg['window']} in flight). CPU is per job over the round trips. Ratios: to "
             f"{BASELINE} in the same round, median over rounds.", ""]
    if machine:
        lines[0] += f" Machine: {machine.get('cpu')}, {machine.get('cores')} cores, Python {machine.get('python')}."
    lines += ["| system | round trip p50 µs | p99 µs | CPU µs/job client | CPU µs/job worker | pipelined req/s "
              "| p50 ÷ Pipe | req/s ÷ Pipe |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in section["systems"].items():
        if "skipped" in e:
            lines.append(f"| {name} | skipped: {e['skipped']} | | | | | | |")
            continue
        m, r = e.get("median", {}), e.get("ratios_to_pipe", {})
        worker = m.get("worker_cpu_us_per_job")
        if m.get("coordinator_cpu_us_per_job") is not None:
            worker_s = f"{_fmt(worker)} (+{_fmt(m['coordinator_cpu_us_per_job'])} coord.)"
        else:
            worker_s = _fmt(worker)
        if "map_items_per_s" in m:
            chunk = e.get("map_chunksize")
            rate = f"{_fmt(m['map_items_per_s'])} items/s (map, " + (
                f"chunksize={chunk})" if chunk else "no chunksize)")
        elif "pipelined_req_per_s" in m:
            rate = f"{_fmt(m['pipelined_req_per_s'])} ({e.get('pipelined_workers', '?')} w)"
        else:
            rate = "—"
        p50r = r.get("p50_vs_pipe", {}).get("median")
        rater = r.get("pipelined_vs_pipe", {}).get("median")
        failed = f" (failed: {e['failed']})" if "failed" in e else ""
        lines.append(f"| {name}{failed} | {_fmt(m.get('p50_us'))} | {_fmt(m.get('p99_us'))} "
                     f"| {_fmt(m.get('client_cpu_us_per_job'))} | {worker_s} | {rate} "
                     f"| {_fmt(p50r, 2)} | {_fmt(rater, 2)} |")
    notes = [f"- {name}: {n}" for name, e in section["systems"].items() for n in e.get("notes", [])]
    notes += [f"- {name}: pipelined {e['pipelined']}" for name, e in section["systems"].items() if "pipelined" in e]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"
