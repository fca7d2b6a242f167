"""The ``shmpool`` command: serve, build, stats, dump, cleanup, stress.

Every failure a user can cause (a shmpool error, a missing file, a bad input line) ends with one
line on stderr and exit status 1; usage errors exit 2 (argparse). Logging goes to stderr through
loguru, at INFO unless ``--log-level`` says otherwise (``stress`` defaults to WARNING, so that
its progress bar stays readable).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

from loguru import logger

import shmpool
from shmpool.errors import AttachError, CleanupError, ShmPoolError
from shmpool.substrate.limits import DEFAULT_LIMIT
from shmpool.substrate.names import runtime_dir, validate_name

from .capacity import CapacityPolicy

__all__ = ["main", "parse_size", "parse_duration", "load_jsonl", "InputError"]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_JSONL_FIELDS = {"dimension_id", "dimension_name", "layer_id", "text", "content_b64", "frequency", "keywords"}
SIZE_HELP = ("sizes take K, M, G, T with or without B/iB, all binary: 280MB = 280MiB = 280 * 2**20 bytes "
             "(the product budget '280 MB' means MiB); a plain number is bytes")


class InputError(ShmPoolError, ValueError):
    """A line of a ``build --from`` file is unusable; names the file, the line and the fault."""

    def __init__(self, *, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}, line {line}: {reason}", path=path, line=line, reason=reason)


# --------------------------------------------------------------------- argument types

def parse_size(text: str) -> int:
    """``"280MB"`` -> 293601280. Every unit is binary (K = KB = KiB = 1024); plain numbers are bytes."""
    m = _SIZE_RE.match(text)
    if not m or (m.group(3) and m.group(3).lower() == "i"):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 280MB, 1GiB, 512KiB or a byte count)")
    number, unit = float(m.group(1)), m.group(2).lower()
    size = int(number * 1024 ** " kmgt".index(unit or " "))
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return size


def parse_duration(text: str) -> float:
    """``"10s"`` -> 10.0; also ``ms``, ``m``, ``h``; a plain number is seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 10s, 500ms, 2m)")
    return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]


def _instance_name(text: str) -> str:
    try:
        return validate_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _job_entry(text: str) -> tuple[str, str]:
    name, sep, target = text.partition("=")
    if not sep or not name or ":" not in target:
        raise argparse.ArgumentTypeError(f"not NAME=module:function: {text!r}")
    return name, target


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# --------------------------------------------------------------------- serve

def cmd_serve(args) -> int:
    from .coordinator import Coordinator

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    capacity = CapacityPolicy(evict=args.evict, compress_cold=args.compress_cold, huge_pages=args.huge_pages,
                              pool_growth=args.pool_growth,
                              spill_dir=Path(args.spill_dir) if args.spill_dir else None)
    with Coordinator(args.name, data_dir=args.data_dir, workers=args.workers,
                     memory_limit=args.memory_limit, capacity=capacity,
                     jobs=dict(args.jobs), job_modules=args.job_modules) as coord:
        endpoint = None
        if args.metrics_port is not None:
            from .metrics import serve_metrics

            try:
                endpoint = serve_metrics(coord, args.metrics_port, args.metrics_addr)  # logs its URL
            except (OSError, ImportError) as exc:  # port taken, bad address, no prometheus-client
                print(f"shmpool serve: error: metrics endpoint {args.metrics_addr}:{args.metrics_port}: {exc}",
                      file=sys.stderr)
                return 1
        try:
            st = coord.stats()
            metrics = f", metrics at {endpoint.url}" if endpoint is not None else ""
            print(f"shmpool: serving {args.name!r}: {st['dimensions']} dimensions, {coord.worker_count} workers, "
                  f"pid {os.getpid()}{metrics} (SIGINT or SIGTERM stops it)", flush=True)
            # A timed wait, so the signal handler's event is seen promptly on every Python version.
            while not stop.wait(0.5):
                pass
            logger.info("stopping {!r} on signal", args.name)
        finally:
            if endpoint is not None:
                endpoint.close()  # before the coordinator unmaps what a scrape reads
    return 0


# --------------------------------------------------------------------- build

def load_jsonl(path: str | os.PathLike) -> list:
    """One RegionBuilder per dimension from a JSON Lines file, one layer per line.

    Raises InputError naming the line for anything unusable; blank lines are skipped.
    """
    from shmpool.data.region_builder import RegionBuilder

    builders: dict[int, RegionBuilder] = {}
    names: dict[int, str] = {}
    source = str(path)
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue

            def bad(reason: str) -> InputError:
                return InputError(path=source, line=lineno, reason=reason)

            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise bad(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
            if not isinstance(rec, dict):
                raise bad(f"expected a JSON object, got {type(rec).__name__}")
            unknown = sorted(set(rec) - _JSONL_FIELDS)
            if unknown:
                raise bad(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_JSONL_FIELDS))}")
            dim, layer = rec.get("dimension_id"), rec.get("layer_id")
            for field, value in (("dimension_id", dim), ("layer_id", layer)):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise bad(f"{field} must be an integer, got {value!r}")
            name = rec.get("dimension_name", names.get(dim))
            if not isinstance(name, str) or not name:
                raise bad(f"dimension_name must be a non-empty string (required on the first line of "
                          f"dimension {dim}), got {name!r}")
            if names.setdefault(dim, name) != name:
                raise bad(f"dimension {dim} was named {names[dim]!r} earlier, now {name!r}")
            if ("text" in rec) == ("content_b64" in rec):
                raise bad("give exactly one of text and content_b64")
            if "text" in rec:
                content = rec["text"]
                if not isinstance(content, str):
                    raise bad(f"text must be a string, got {type(content).__name__}")
            else:
                try:
                    content = base64.b64decode(rec["content_b64"], validate=True)
                except (TypeError, ValueError) as exc:
                    raise bad(f"content_b64 is not valid base64: {exc}") from None
            frequency = rec.get("frequency", 0.0)
            if isinstance(frequency, bool) or not isinstance(frequency, (int, float)):
                raise bad(f"frequency must be a number, got {frequency!r}")
            keywords = rec.get("keywords", [])
            if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
                raise bad(f"keywords must be a list of strings, got {keywords!r}")
            try:
                if dim not in builders:
                    builders[dim] = RegionBuilder(dim, name)
                builders[dim].add_layer(layer, content, frequency=float(frequency), keywords=keywords)
            except (ShmPoolError, ValueError, TypeError) as exc:
                raise bad(str(exc)) from None
    if not builders:
        raise InputError(path=source, line=0, reason="no layers in the file")
    return [builders[d] for d in sorted(builders)]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "dimension"


def cmd_build(args) -> int:
    from .loading import REGION_SUFFIX

    out = Path(args.directory)
    if args.source is None:
        from shmpool.data.sample import build_sample

        out.mkdir(parents=True, exist_ok=True)
        paths = build_sample(out, seed=args.seed)
    else:
        builders = load_jsonl(args.source)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for b in builders:
            path = out / f"dim{b.dimension_id:03d}-{_slug(b.name)}{REGION_SUFFIX}"
            b.write(path)
            paths.append(path)
    total = sum(Path(p).stat().st_size for p in paths)
    print(f"shmpool: wrote {len(paths)} region files ({total:,} bytes) to {out}")
    return 0


# --------------------------------------------------------------------- stats and dump

def _reader_view(reader) -> list[dict]:
    dims = []
    for dim_id, dim_name in reader.dimensions().items():
        ids = reader.layer_ids(dim_id)
        dims.append({"dimension_id": dim_id, "name": dim_name, "generation": reader.generation(dim_id),
                     "layers": {"count": len(ids), "min_id": min(ids, default=None),
                                "max_id": max(ids, default=None)}})
    return dims


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def cmd_stats(args) -> int:
    with shmpool.attach(args.name) as reader:
        st = reader.stats()
        dims = _reader_view(reader)
    if args.json:
        print(json.dumps({**st, "dimensions": dims}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    def capacity_style(fraction: float, th: dict) -> tuple[str, str]:
        """Rich style and words for a usage fraction against the instance's per-mille thresholds.

        A pool's own utilization gets the same colours: a pool near full fails allocations (or
        grows) even while the memory limit is far."""
        if fraction * 1000 >= th["refuse"]:
            return "bold red", f"refusing: allocations that would pass {th['refuse'] / 10:.0f}% are refused"
        if fraction * 1000 >= th["evict"]:
            return "dark_orange", f"evicting: above the {th['evict'] / 10:.0f}% eviction threshold"
        if fraction * 1000 >= th["warn"]:
            return "yellow", f"warning: above the {th['warn'] / 10:.0f}% warning threshold"
        return "green", "ok"

    th = st["thresholds"]
    usage = st["used_bytes"] / st["memory_limit"] if st["memory_limit"] else 0.0
    style, word = capacity_style(usage, th)
    console = Console()
    console.print(f"[bold]shmpool instance {args.name!r}[/]: {len(dims)} dimensions, "
                  f"{st['readers_attached']} readers attached (this one included), peak {st['readers_peak']}")
    console.print(f"memory: [{style}]{_mib(st['used_bytes'])} of {_mib(st['memory_limit'])} "
                  f"({usage:.1%}) — {word}[/]; peak {_mib(st['peak_bytes'])}; {st['live_allocations']} live "
                  f"allocations; {st['failures']} failures ({st['limit_refusals']} refused by the limit)")
    pools = Table(title="pools", title_justify="left")
    for col in ("pool", "block size", "used / total blocks", "utilization", "fragmentation", "peak blocks",
                "allocations", "failures"):
        pools.add_column(col, justify="right")
    for p in st["pools"]:
        pools.add_row(str(p["index"]), f"{p['block_size'] // 1024} KiB",
                      f"{p['blocks_used']:,} / {p['blocks_total']:,}",
                      f"[{capacity_style(p['utilization'], th)[0]}]{p['utilization']:.1%}[/]",
                      f"{p['fragmentation']:.1%}", f"{p['peak_blocks_used']:,}", f"{p['allocations']:,}",
                      f"{p['failures']:,}")
    console.print(pools)
    table = Table(title="dimensions", title_justify="left")
    for col in ("id", "name", "generation", "layers"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for d in dims:
        table.add_row(str(d["dimension_id"]), d["name"], str(d["generation"]), f"{d['layers']['count']:,}")
    console.print(table)
    console.print(_pins_table(st))
    return 0


_PIN_STYLE = {"current": "", "held": "", "waiting": "yellow", "stale": "bold red"}


def _pins_table(st: dict):
    """The generations readers hold: what each one keeps from being freed, and for how long."""
    from rich.table import Table

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


def cmd_dump(args) -> int:
    with shmpool.attach(args.name) as reader:
        state = {"name": args.name, "view": "reader",
                 "note": "as seen by an attached reader; Coordinator.dump_state() in the coordinator's "
                         "process also lists allocations, superseded generations and workers",
                 "stats": reader.stats(), "dimensions": _reader_view(reader)}
    print(json.dumps(state, indent=2))
    return 0


# --------------------------------------------------------------------- cleanup

def cmd_cleanup(args) -> int:
    from filelock import FileLock, Timeout

    try:
        shmpool.attach(args.name).close()
    except AttachError:
        pass
    else:
        print(f"shmpool: refusing to clean up {args.name!r}: its coordinator is running "
              "(stop it with SIGTERM instead)", file=sys.stderr)
        return 1
    # The coordinator holds this flock for its whole life, also while starting or stopping, when
    # attach fails; holding it here also keeps a new coordinator from starting mid-sweep.
    lock = FileLock(str(runtime_dir() / f"{args.name}.coordinator.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"shmpool: refusing to clean up {args.name!r}: a coordinator holds its lock "
              "(starting or stopping)", file=sys.stderr)
        return 1
    try:
        removed = shmpool.cleanup(args.name)
    except CleanupError as exc:  # e.g. another user's objects: what went, then one line on what did not
        for obj in exc.removed:
            print(f"removed {obj}")
        raise
    finally:
        lock.release()
    if not removed:
        print(f"shmpool: nothing of {args.name!r} to clean up")
    for obj in removed:
        print(f"removed {obj}")
    return 0


# --------------------------------------------------------------------- stress

def cmd_stress(args) -> int:
    from rich.console import Console

    from ..tools.stress import render_report, run_stress, write_outputs

    result = run_stress(args.name, clients=args.clients, duration=args.duration,
                        crystallize_every=args.crystallize_every, kill_workers=args.kill_workers,
                        workers=args.workers, data_dir=args.data_dir, progress=not args.quiet)
    console = Console()
    console.print(render_report(result))
    if args.out is not None:
        paths, note = write_outputs(result, args.out)
        for p in paths:
            console.print(f"wrote {p}")
        if note:
            console.print(note)
    return 0 if result["ok"] else 1


# --------------------------------------------------------------------- the parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shmpool", description="Serve immutable data to many processes "
                                     "through POSIX shared memory.")
    parser.add_argument("--version", action="version", version=f"shmpool {shmpool.__version__}")
    parser.add_argument("--log-level", default=None, metavar="LEVEL",
                        help="stderr log level (DEBUG, INFO, WARNING, ...); default INFO, WARNING for stress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run a coordinator in the foreground until SIGINT/SIGTERM",
                       description="Run a coordinator for instance NAME until SIGINT or SIGTERM, then stop "
                                   f"it cleanly. {SIZE_HELP}.")
    p.add_argument("name", type=_instance_name, metavar="NAME")
    p.add_argument("--data-dir", metavar="DIR", help="folder of *.region files (default: the built-in sample)")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (default: CPU count; 0: none)")
    p.add_argument("--memory-limit", type=parse_size, default=DEFAULT_LIMIT, metavar="SIZE",
                   help="shared memory budget (default 280MB = 280 MiB)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on this port (needs prometheus-client; 0 picks one)")
    p.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR", help="bind address (default 127.0.0.1)")
    p.add_argument("--evict", action=argparse.BooleanOptionalAction, default=True,
                   help="evict least recently used dimensions above 85%% of the limit (default on)")
    p.add_argument("--compress-cold", action="store_true", help="store cold dimensions zstd-compressed")
    p.add_argument("--huge-pages", action="store_true", help="madvise(MADV_HUGEPAGE) on pool segments")
    p.add_argument("--pool-growth", type=int, default=2, metavar="N",
                   help="segments each full pool may add while the limit allows (default 2)")
    p.add_argument("--spill-dir", metavar="DIR",
                   help="where crystallized dimensions are written before eviction (default: runtime dir)")
    p.add_argument("--job-module", action="append", default=[], metavar="PREFIX", dest="job_modules",
                   help="let clients run 'module:function' for functions defined in this module or its "
                        "submodules (repeatable; default: only the built-in jobs)")
    p.add_argument("--job", action="append", default=[], type=_job_entry, metavar="NAME=MODULE:FUNCTION",
                   dest="jobs", help="let clients run job NAME, which calls MODULE:FUNCTION (repeatable)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("build", help="write region files: the sample data set, or from a JSONL file",
                       description="Write one region file per dimension into DIR: the built-in sample, or "
                                   "with --from one layer per JSON line: {\"dimension_id\": 1, "
                                   "\"dimension_name\": \"x\", \"layer_id\": 5, \"text\": \"...\"} "
                                   "(or \"content_b64\" for binary), optional \"frequency\", \"keywords\".")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample data set (default 0)")
    p.add_argument("--from", dest="source", metavar="FILE.jsonl", help="build from this JSON Lines file")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("stats", help="memory, pools and generations of a running instance")
    p.add_argument("name", type=_instance_name, metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("dump", help="JSON state of a running instance, as an attached reader sees it",
                       description="Print the state as seen by an attached reader (stats, dimensions, "
                                   "generations, layer counts). The coordinator's own dump_state() is "
                                   "richer but lives in its process.")
    p.add_argument("name", type=_instance_name, metavar="NAME")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("cleanup", help="remove what a crashed instance left in /dev/shm",
                       description="Unlink every segment and semaphore of NAME. Refuses (exit 1) while a "
                                   "coordinator of NAME is alive.")
    p.add_argument("name", type=_instance_name, metavar="NAME")
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("stress", help="create an instance and hammer it with clients; report",
                       description="Create instance NAME (the run starts its own coordinator, so that it can "
                                   "crystallize new generations and kill workers), run client threads in "
                                   "several processes against it, then stop it and report torn reads, lost "
                                   "jobs, leaks and latencies. Exit 1 if anything that must not happen did. "
                                   "Durations take ms, s, m, h; a plain number is seconds.")
    p.add_argument("name", type=_instance_name, metavar="NAME", help="instance to create for the run")
    p.add_argument("--clients", type=_positive_int, default=128, metavar="N", help="client threads (default 128)")
    p.add_argument("--duration", type=parse_duration, default=10.0, metavar="T", help="default 10s")
    p.add_argument("--crystallize-every", type=parse_duration, default=1.0, metavar="T",
                   help="publish a new generation of stress dimension 100 this often (default 1s; 0: never)")
    p.add_argument("--kill-workers", action=argparse.BooleanOptionalAction, default=False,
                   help="SIGKILL a random worker every ~2 s (default: no)")
    p.add_argument("--workers", type=_positive_int, metavar="N", help="worker processes (default: CPU count)")
    p.add_argument("--data-dir", metavar="DIR", help="folder of *.region files (default: the built-in sample)")
    p.add_argument("--out", metavar="DIR", help="write stress-<timestamp>.json (and .png with matplotlib) here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_stress)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or ("WARNING" if args.command == "stress" else "INFO")
    logger.enable("shmpool")  # every subpackage, the coordinator's and the workers' included
    if args.log_level:
        os.environ["SHMPOOL_LOG_LEVEL"] = level  # inherited by worker processes
    logger.remove()
    # Looked up at each message, so that output goes through rich's stderr proxy while a
    # progress bar is live instead of tearing it.
    logger.add(lambda message: sys.stderr.write(message), level=level.upper(),
               format="{time:HH:mm:ss.SSS} | {level: <7} | {message}")
    try:
        return args.func(args)
    except (ShmPoolError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"shmpool {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"shmpool {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `shmpool dump NAME | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
