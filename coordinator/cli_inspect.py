"""The read-only commands: ``stats``, ``dump`` and ``health``, each from an attached reader.

None of them needs the coordinator's process: everything they print is read from the instance's
shared memory (the control segment, and the job board when the instance has workers).
``stats --json`` carries ``schema_version``; it is raised when a key changes meaning or goes
away, not when one is added.
"""

from __future__ import annotations

import argparse
import json
from typing import Any
import os
import sys

import shmpool
from shmpool.errors import AttachError
from shmpool.substrate.limits import CapacityState, Thresholds
from shmpool.substrate.names import list_objects
from shmpool.substrate.removal import coordinator_pid, removed_reason

from .name_watch import removed_under

__all__ = ["STATS_SCHEMA_VERSION", "NotServing", "attach", "board_summary", "cmd_stats", "cmd_dump",
           "cmd_health"]

# 2: "jobs" and "workers" read from the job board; "capacity_state". (1 had neither, unversioned.)
STATS_SCHEMA_VERSION = 2


class NotServing(Exception):
    """Instance NAME has no live coordinator; the message is the one line the CLI prints."""


def attach(name: str) -> shmpool.Reader:
    """``shmpool.attach(name)``, with an error that says what the user needs to know."""
    try:
        return shmpool.attach(name)
    except AttachError as exc:
        # Health, cleanup and a new coordinator read the same two facts (the lock's holder, the
        # control segment) and say the same thing: a live coordinator whose names are gone.
        removed = removed_under(name)
        if removed is not None:
            raise NotServing(f"{name!r} is not serving: {removed_reason(name, removed)}") from None
        segments, semaphores = list_objects(name)
        if not segments and not semaphores:
            holder = coordinator_pid(name)
            if holder is not None:  # starting (nothing created yet) or stopping (all removed already)
                raise NotServing(f"{name!r} is not serving: coordinator pid {holder} holds its lock but has no "
                                 "names in /dev/shm (starting or stopping)") from None
            raise NotServing(f"no coordinator {name!r} is running (nothing of it in /dev/shm)") from None
        reason = exc.reason
        if "`shmpool cleanup`" in reason:  # the reason gives the hint already: name the instance in it
            hint = ""
            reason = reason.replace("`shmpool cleanup`", f"`shmpool cleanup {name}`")
        else:
            hint = f" (if its coordinator crashed, `shmpool cleanup {name}` removes what it left)"
        raise NotServing(f"{name!r} is not serving: {reason}{hint}") from None


def board_summary(name: str) -> dict[str, Any] | None:
    """Jobs and workers as the job board in shared memory has them; None without a board."""
    from shmpool.jobs.jobboard import JobBoard

    try:
        board = JobBoard.attach(name)
    except AttachError:  # workers=0: the instance has no job board
        return None
    try:
        return board.summary()
    finally:
        board.close()


def _reader_view(reader: shmpool.Reader) -> list[dict[str, Any]]:
    dims = []
    for dim_id, dim_name in reader.dimensions().items():
        ids = reader.layer_ids(dim_id)
        dims.append({"dimension_id": dim_id, "name": dim_name, "generation": reader.generation(dim_id),
                     "layers": {"count": len(ids), "min_id": min(ids, default=None),
                                "max_id": max(ids, default=None)}})
    return dims


def _snapshot(name: str) -> dict[str, Any]:
    with attach(name) as reader:
        st = reader.stats()
        dims = _reader_view(reader)
    board = board_summary(name)
    th = Thresholds(**st["thresholds"])
    return {"schema_version": STATS_SCHEMA_VERSION, **st,
            "capacity_state": th.state(st["used_bytes"], st["memory_limit"]).label,
            "dimensions": dims,
            "jobs": board["jobs"] if board else None, "workers": board["workers"] if board else None}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


_STYLE = {CapacityState.OK: "green", CapacityState.WARN: "yellow", CapacityState.EVICT: "dark_orange",
          CapacityState.REFUSE: "bold red"}


def _capacity_words(state: CapacityState, th: Thresholds) -> str:
    if state is CapacityState.REFUSE:
        return f"refusing: allocations that would pass {th.refuse / 10:.0f}% are refused"
    if state is CapacityState.EVICT:
        return f"evicting: above the {th.evict / 10:.0f}% eviction threshold"
    if state is CapacityState.WARN:
        return f"warning: above the {th.warn / 10:.0f}% warning threshold"
    return "ok"


def plural(n: int, word: str) -> str:
    """'1 worker', '2 workers', '1,000 objects'."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def cmd_stats(args: argparse.Namespace) -> int:
    snap = _snapshot(args.name)
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    from ._rich import rich

    Console = rich("console", instead="stats --json works without it").Console
    Table = rich("table").Table
    st, dims = snap, snap["dimensions"]
    th = Thresholds(**st["thresholds"])
    state = CapacityState[snap["capacity_state"].upper()]
    usage = st["used_bytes"] / st["memory_limit"] if st["memory_limit"] else 0.0
    style = _STYLE[state]
    console = Console(width=_width())
    console.print(f"[bold]shmpool instance {args.name!r}[/]: {plural(len(dims), 'dimension')}, "
                  f"{st['readers_attached']} readers attached (this one included), peak {st['readers_peak']}")
    console.print(f"memory: [{style}]{_mib(st['used_bytes'])} of {_mib(st['memory_limit'])} "
                  f"({usage:.1%}) — {_capacity_words(state, th)}[/]; peak {_mib(st['peak_bytes'])}; "
                  f"{st['live_allocations']} live allocations; {st['failures']} failures "
                  f"({st['limit_refusals']} refused by the limit)")
    if snap["jobs"] is not None:
        jobs, workers = snap["jobs"], snap["workers"]
        console.print(f"jobs: {jobs['queued']} queued, {jobs['running']} running, {jobs['free']} of "
                      f"{jobs['slots']} slots free; {jobs['completed']:,} completed, {jobs['failed']:,} failed; "
                      f"{plural(jobs['clients'], 'client')}; {plural(workers['running'], 'worker')} "
                      f"({workers['deaths']} died)")
    pools = Table(title="pools", title_justify="left")
    # Headers short enough for an 80-column terminal whole (the long ones were cut to "utiliz…").
    for col in ("pool", "block", "blocks used", "use", "frag.", "peak", "allocs", "fails"):
        pools.add_column(col, justify="right")
    for p in st["pools"]:
        pool_style = _STYLE[th.state(p["blocks_used"], p["blocks_total"])]
        pools.add_row(str(p["index"]), _block(p["block_size"]),
                      f"{p['blocks_used']:,} / {p['blocks_total']:,}",
                      f"[{pool_style}]{p['utilization']:.1%}[/]",
                      f"{p['fragmentation']:.1%}", f"{p['peak_blocks_used']:,}", f"{p['allocations']:,}",
                      f"{p['failures']:,}")
    console.print(pools)
    table = Table(title="dimensions", title_justify="left")
    for col in ("id", "name", "generation", "layers"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for d in dims:
        table.add_row(str(d["dimension_id"]), d["name"], str(d["generation"]), f"{d['layers']['count']:,}")
    console.print(table)
    console.print(_pins_table(st, Table))
    return 0


def _width() -> int | None:
    """The terminal's width, or COLUMNS; piped, wide enough that no line is broken at 80."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None  # rich's own choice: COLUMNS, else the terminal's size
    return 240


def _block(size: int) -> str:
    """A block size (a power of two) in its largest whole unit: 64 B, 4 KiB, 1 MiB."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size // scale} {unit}"
    return f"{size} B"


_PIN_STYLE = {"current": "", "held": "", "waiting": "yellow", "stale": "bold red"}


def _pins_table(st: dict[str, Any], Table: Any) -> Any:
    """The generations readers hold: what each one keeps from being freed, and for how long."""
    title = (f"pins: {len(st['pins'])}, retaining {_mib(st['pins_retained_bytes'])} of superseded "
             f"regions (stale after {st['max_pin_age']:g} s)")
    table = Table(title=title, title_justify="left")
    for col in ("pid", "dimension", "generation", "state", "age", "retained"):
        table.add_column(col, justify="right")
    for p in sorted(st["pins"], key=lambda p: (p["state"] == "current", p["pid"], p["dimension_id"], p["generation"])):
        style = _PIN_STYLE[p["state"]]
        state = p["state"] + ("" if p["answered"] else ", not answering")
        table.add_row(str(p["pid"]), str(p["dimension_id"]), str(p["generation"]) + (" (range)" if p["by_range"] else ""),
                      f"[{style}]{state}[/]" if style else state,
                      "-" if p["age_s"] is None else f"{p['age_s']:.1f} s",
                      "-" if not p["bytes_retained"] else f"{p['bytes_retained']:,} B")
    return table


def cmd_dump(args: argparse.Namespace) -> int:
    with attach(args.name) as reader:
        state = {"name": args.name, "view": "reader",
                 "note": "as seen by an attached reader; Coordinator.dump_state() in the coordinator's "
                         "process also lists allocations, superseded generations and workers",
                 "stats": reader.stats(), "dimensions": _reader_view(reader)}
    print(json.dumps(state, indent=2))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 and one line when NAME is serving; NotServing (exit 1, one line) otherwise.

    Attaching proves the coordinator is alive and running (attach refuses a dead or stopping
    one); the job board, when there is one, must also be accepting work."""
    with attach(args.name) as reader:
        dims = len(reader.dimensions())
    bereft = removed_under(args.name)  # attachable still, but some of its names are gone: it is about to stop
    if bereft is not None:
        raise NotServing(f"{args.name!r} is not serving: {removed_reason(args.name, bereft)}")
    board = board_summary(args.name)
    if board is not None and not board["accepting"]:
        raise NotServing(f"{args.name!r} is not serving: its job board is stopping")
    workers = "" if board is None else f", {plural(board['workers']['running'], 'worker')}"
    print(f"ok: {args.name!r} is serving {plural(dims, 'dimension')}{workers}")
    return 0
