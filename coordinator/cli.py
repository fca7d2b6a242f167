"""The ``shmpool`` command: serve, build, stats, dump, health, cleanup, stress, completion.

A user's mistake never shows a traceback: a bad argument (or ``SHMPOOL_*`` variable) is one
line on stderr and exit status 2, checked before anything starts; a failure at run time (a
shmpool error, a file that cannot be read, an instance that is not running) is one line and
exit status 1. Logging goes to stderr through loguru, at INFO unless ``--log-level`` says
otherwise (``stress`` defaults to WARNING, so that its progress bar stays readable), as text or
with ``--log-format json`` one JSON object per line (loguru's ``serialize``).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from shmpool.substrate._log import import_loguru_for_records, logger, when_loguru_imported

import shmpool
from shmpool.errors import AttachError, CleanupError, InvalidJob, ShmPoolError
from shmpool.substrate.limits import DEFAULT_LIMIT
from shmpool.substrate.names import coordinator_lock_path, list_objects, runtime_dir
from shmpool.substrate.removal import coordinator_pid, removed_reason

from . import cli_args as T
from ._rich import MissingExtra
from .cli_args import SIZE_HELP, parse_duration, parse_size
from .cli_build import InputError, cmd_build, load_jsonl
from .cli_inspect import NotServing, cmd_dump, cmd_health, cmd_stats, plural
from .name_watch import removed_under

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["main", "build_parser", "parse_size", "parse_duration", "load_jsonl", "InputError"]

LOG_FORMAT = "{time:HH:mm:ss.SSS} | {level: <7} | {message}"


class UsageError(Exception):
    """A mistake in the arguments found after parsing (exit 2, one line)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage block is what ``--help`` is for)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # "-1s" or "-5MiB" after an option is its (wrong) value, for its type to refuse by name;
        # argparse's default takes only plain negative numbers as values and called these
        # unknown options ("expected one argument"). No option of ours starts with a digit.
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------- serve

_SERVE_DEFAULTS: dict[str, Any] = {"workers": None, "memory_limit": DEFAULT_LIMIT, "metrics_port": None,
                   "metrics_addr": "127.0.0.1", "evict": True, "mapped_regions": True, "compress_cold": False, "huge_pages": False,
                   "pool_growth": 2, "spill_dir": None, "data_dir": None, "sample": False, "job_modules": [],
                   "jobs": []}


def apply_env_defaults(args: argparse.Namespace) -> None:
    """Fill serve's flags left unset from ``SHMPOOL_*`` (flags win), then from the built-in defaults."""
    for dest, default in _SERVE_DEFAULTS.items():
        if getattr(args, dest) not in (None, []):
            continue
        var, kind = T.ENV_DEFAULTS[dest]
        raw = os.environ.get(var)
        if raw is None or raw == "":
            setattr(args, dest, default)
            continue
        try:
            setattr(args, dest, kind(raw))
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"environment variable {var}={raw!r}: {exc}") from None


def check_serve(args: argparse.Namespace) -> None:
    """What argparse cannot see alone; all before the coordinator starts."""
    from shmpool.data import compression
    from shmpool.workers.jobs import JobPolicy

    if args.sample and args.data_dir is not None:
        raise UsageError("--sample and --data-dir both name the data to serve: give one")
    if args.compress_cold and not compression.available():
        raise UsageError("--compress-cold needs the zstandard package: pip install 'shmpool[compress]'")
    try:
        # The Coordinator's own check, here: a refused entry is the arguments' fault (exit 2),
        # and nothing has started yet.
        JobPolicy.build(dict(args.jobs), args.job_modules)
    except InvalidJob as exc:
        raise UsageError(str(exc)) from None
    if args.metrics_port is not None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise UsageError("--metrics-port needs prometheus-client: pip install 'shmpool[metrics]'") from None
        bad_address = T.bad_address(args.metrics_addr)
        if bad_address:
            raise UsageError(f"--metrics-addr: {bad_address}")
        if args.metrics_port != 0:  # port 0 is any free port: nothing to probe but the address
            why = T.probe_bind(args.metrics_addr, args.metrics_port)
            if why:
                raise RuntimeFailure(f"metrics endpoint {args.metrics_addr}:{args.metrics_port}: {why}")


class RuntimeFailure(Exception):
    """A failure that is not the arguments' fault (exit 1, one line)."""


def cmd_serve(args: argparse.Namespace) -> int:
    from .capacity import CapacityPolicy
    from .coordinator import Coordinator

    check_serve(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    capacity = CapacityPolicy(evict=args.evict, compress_cold=args.compress_cold, huge_pages=args.huge_pages,
                              pool_growth=args.pool_growth,
                              spill_dir=Path(args.spill_dir) if args.spill_dir else None)
    if args.sample:
        data_dir = shmpool.SAMPLE
    else:
        data_dir = args.data_dir
        if data_dir is None:
            logger.info("no --data-dir: serving no data, only jobs (--data-dir DIR serves its region files, "
                        "--sample the built-in sample)")
    with Coordinator(args.name, data_dir=data_dir, workers=args.workers,
                     memory_limit=args.memory_limit, capacity=capacity, mapped_regions=args.mapped_regions,
                     jobs=dict(args.jobs), job_modules=args.job_modules) as coord:
        st = coord.stats()
        skipped = coord.load_report.skipped
        if st["dimensions"] == 0 and skipped:
            # Serving nothing is never what was asked for: 1KB of limit used to start, exit 0.
            raise RuntimeFailure(f"nothing to serve: all {len(skipped)} region files were skipped "
                                 f"(first: {skipped[0][0]}: {skipped[0][1]})")
        endpoint = None
        if args.metrics_port is not None:
            from .metrics import serve_metrics

            try:
                endpoint = serve_metrics(coord, args.metrics_port, args.metrics_addr)  # logs its URL
            except (OSError, ImportError) as exc:  # taken since the probe, or an address the probe missed
                raise RuntimeFailure(f"metrics endpoint {args.metrics_addr}:{args.metrics_port}: {exc}") from None
        try:
            metrics = f", metrics at {endpoint.url}" if endpoint is not None else ""
            print(f"shmpool: serving {args.name!r}: {plural(st['dimensions'], 'dimension')}, "
                  f"{plural(coord.worker_count, 'worker')}, pid {os.getpid()}{metrics} "
                  "(SIGINT or SIGTERM stops it)", flush=True)
            # A timed wait, so the signal handler's event is seen promptly on every Python version.
            while not stop.wait(0.5):
                if coord.names_lost is not None:  # it stops itself (its ERROR says why): exit 1, to be restarted
                    raise RuntimeFailure(f"{args.name!r} stopped: its names were removed from /dev/shm under it")
            logger.info("stopping {!r} on signal", args.name)
        finally:
            if endpoint is not None:
                endpoint.close()  # before the coordinator unmaps what a scrape reads
    return 0


# --------------------------------------------------------------------- cleanup

def cmd_cleanup(args: argparse.Namespace) -> int:
    from .name_lock import NameLock, remove_instance_files

    if args.dead == (args.name is not None):
        raise UsageError("give NAME or --dead, not both" if args.dead else "give NAME, or --dead for every dead instance")
    if not args.dead and (args.prefix or args.older_than is not None):
        raise UsageError("--prefix and --older-than go with --dead")
    if args.dead:
        return _cleanup_dead(args)
    bereft = removed_under(args.name)  # the coordinator whose names are gone, if that is the case
    if bereft is not None:  # as health and a new coordinator say it (attach may still work meanwhile)
        raise RuntimeFailure(f"refusing to clean up {args.name!r}: {removed_reason(args.name, bereft)}")
    try:
        shmpool.attach(args.name).close()
    except AttachError:
        pass
    else:
        raise RuntimeFailure(f"refusing to clean up {args.name!r}: its coordinator is running "
                             "(stop it with SIGTERM instead)")
    # The coordinator holds this flock for its whole life, also while starting or stopping, when
    # attach fails; holding it here also keeps a new coordinator from starting mid-sweep.
    lock = NameLock(coordinator_lock_path(args.name))
    if not lock.try_acquire():
        holder = coordinator_pid(args.name)
        who = f"coordinator pid {holder}" if holder is not None else "a coordinator"
        raise RuntimeFailure(f"refusing to clean up {args.name!r}: {who} holds its lock (starting or stopping)")
    segments = set(list_objects(args.name)[0])
    swept = False
    try:
        removed = shmpool.cleanup(args.name)
        swept = True
    except CleanupError as exc:  # e.g. another user's objects: what went, then one line on what did not
        if exc.removed:  # else "nothing to clean up" would contradict the error line
            _cleanup_summary(args, exc.removed, segments)
        raise
    finally:
        if swept:  # the crashed instance's lock files and empty spill folder go with it
            remove_instance_files(args.name, runtime_dir() / f"{args.name}.spill")
        lock.release(remove=swept)
    _cleanup_summary(args, removed, segments)
    return 0


def _cleanup_dead(args: argparse.Namespace) -> int:
    """Every instance of ours whose coordinator died with no one to stop it (sweep_dead's rule)."""
    from shmpool.substrate.instance import SWEEP_MIN_AGE, sweep_dead

    older_than = SWEEP_MIN_AGE if args.older_than is None else args.older_than
    removed = sweep_dead(args.prefix or "", min_age=older_than)
    if not removed:
        print("shmpool: no dead instances to clean up")
    else:
        print(f"shmpool: removed {plural(len(removed), 'dead instance')}: {', '.join(map(repr, removed))}")
    return 0


def _cleanup_summary(args: argparse.Namespace, removed: Sequence[str], segments: set[str]) -> None:
    if not removed:
        print(f"shmpool: nothing of {args.name!r} to clean up")
        return
    nseg = sum(1 for obj in removed if obj in segments)
    kinds = ", ".join(k for k in (plural(nseg, "segment") if nseg else "",
                                  plural(len(removed) - nseg, "semaphore") if len(removed) > nseg else "") if k)
    print(f"shmpool: removed {plural(len(removed), 'object')} of {args.name!r} ({kinds})")
    if args.verbose:
        for obj in removed:
            print(f"removed {obj}")


# --------------------------------------------------------------------- stress

def cmd_stress(args: argparse.Namespace) -> int:
    from ._rich import rich
    from ..tools.stress import render_report, run_stress, write_outputs

    Console = rich("console").Console  # before the run: a missing rich must not cost a whole run
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


# --------------------------------------------------------------------- completion

def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A bash completion for ``shmpool`` (zsh through bashcompinit): commands, each one's flags,
    and instance names from /dev/shm. Generated from the parser, so it cannot drift from it."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    top = [s for a in parser._actions for s in a.option_strings]
    cases = []
    for name, p in sub.choices.items():
        flags = " ".join(s for a in p._actions for s in a.option_strings)
        cases.append(f"        {name}) opts=\"{flags}\" ;;")
    script = f"""# shmpool {shmpool.__version__} completion: eval "$(shmpool completion {shell})"
_shmpool() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" cmd="" opts="" w
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$w" in {"|".join(sub.choices)}) cmd="$w"; break ;; esac
    done
    case "$cmd" in
        "") COMPREPLY=($(compgen -W "{" ".join(sub.choices)} {" ".join(top)}" -- "$cur")); return ;;
{chr(10).join(cases)}
    esac
    local names=""
    if [[ "$cur" != -* && "$cmd" != build && "$cmd" != completion ]]; then
        names=$(ls /dev/shm 2>/dev/null | sed -n 's/^shmpool\\.\\([^.]*\\)\\.control$/\\1/p')
    fi
    COMPREPLY=($(compgen -W "$opts $names" -- "$cur"))
}}
complete -o default -F _shmpool shmpool
"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


# --------------------------------------------------------------------- the parser

def _logging_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    # Accepted before and after the command; the subcommand's copy only overrides when given.
    default = None if top else argparse.SUPPRESS
    p.add_argument("--log-level", type=T.log_level, default=default, metavar="LEVEL",
                   help="stderr log level (DEBUG, INFO, WARNING, ...); default $SHMPOOL_LOG_LEVEL, else INFO "
                        "(WARNING for stress)")
    p.add_argument("--log-format", choices=("text", "json"), default=default,
                   help="text lines, or one JSON object per line (default $SHMPOOL_LOG_FORMAT, else text)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="shmpool", description="Serve immutable data to many processes "
                           "through POSIX shared memory.")
    parser.add_argument("--version", action="version", version=f"shmpool {shmpool.__version__}")
    _logging_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kw)
        _logging_options(p, top=False)
        return p

    env = ("Every flag has an environment default, SHMPOOL_ and the flag's name in capitals "
           "(SHMPOOL_MEMORY_LIMIT=1GiB, SHMPOOL_EVICT=0, SHMPOOL_JOB_MODULES=a,b); a flag given wins.")
    p = command("serve", help="run a coordinator in the foreground until SIGINT/SIGTERM",
                description="Run a coordinator for instance NAME until SIGINT or SIGTERM, then stop "
                            f"it cleanly. {SIZE_HELP}. {env}")
    p.add_argument("name", type=T.instance_name, metavar="NAME")
    p.add_argument("--data-dir", type=T.existing_dir, metavar="DIR",
                   help="folder of *.region files (default: none, serve no data)")
    p.add_argument("--sample", action="store_const", const=True, default=None,
                   help="serve the built-in 14-dimension sample (for trying shmpool out)")
    p.add_argument("--workers", type=T.workers, metavar="N",
                   help=f"worker processes, 0..{T.MAX_WORKERS} (default: CPU count; 0: none)")
    p.add_argument("--memory-limit", type=T.memory_limit, metavar="SIZE",
                   help="shared memory budget, at least 1MiB (default 280MiB)")
    p.add_argument("--metrics-port", type=T.port, metavar="PORT",
                   help="serve Prometheus metrics on this port (needs prometheus-client; 0 picks one)")
    p.add_argument("--metrics-addr", metavar="ADDR", help="bind address (default 127.0.0.1)")
    p.add_argument("--evict", action=argparse.BooleanOptionalAction, default=None,
                   help="evict least recently used dimensions above 85%% of the limit (default on)")
    p.add_argument("--compress-cold", action="store_const", const=True, default=None,
                   help="store cold dimensions zstd-compressed (needs zstandard)")
    p.add_argument("--mapped-regions", action=argparse.BooleanOptionalAction, default=None,
                   help="serve region files of yours by mapping a verified copy in the region store, outside "
                        "the memory limit (default on; --no-mapped-regions copies them into shared memory)")
    p.add_argument("--huge-pages", action="store_const", const=True, default=None,
                   help="madvise(MADV_HUGEPAGE) on pool segments")
    p.add_argument("--pool-growth", type=T.pool_growth, metavar="N",
                   help=f"segments each full pool may add while the limit allows, 0..{T.MAX_POOL_GROWTH} "
                        "(default 2)")
    p.add_argument("--spill-dir", type=T.writable_dir, metavar="DIR",
                   help="where crystallized dimensions are written before eviction (default: runtime dir)")
    p.add_argument("--job-module", action="append", default=[], metavar="PREFIX", dest="job_modules",
                   help="let clients run 'module:function' for functions defined in this module or its "
                        "submodules (repeatable; default: only the built-in jobs)")
    p.add_argument("--job", action="append", default=[], type=T.job_entry, metavar="NAME=MODULE:FUNCTION",
                   dest="jobs", help="let clients run job NAME, which calls MODULE:FUNCTION (repeatable)")
    p.set_defaults(func=cmd_serve)

    p = command("build", help="write region files: the sample data set, or from a JSONL file",
                description="Write one region file per dimension into DIR: the built-in sample, or "
                            "with --from one layer per JSON line: {\"dimension_id\": 1, "
                            "\"dimension_name\": \"x\", \"layer_id\": 5, \"text\": \"...\"} "
                            "(or \"content_b64\" for binary), optional \"frequency\", \"keywords\".")
    p.add_argument("directory", type=T.writable_dir, metavar="DIR")
    p.add_argument("--seed", type=T.seed, default=0, help="seed of the sample data set, 0..2**32-1 (default 0)")
    p.add_argument("--from", dest="source", type=T.readable_file, metavar="FILE.jsonl",
                   help="build from this JSON Lines file")
    p.set_defaults(func=cmd_build)

    p = command("stats", help="memory, pools, jobs and generations of a running instance")
    p.add_argument("name", type=T.instance_name, metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON (with a schema_version) instead of tables")
    p.set_defaults(func=cmd_stats)

    p = command("dump", help="JSON state of a running instance, as an attached reader sees it",
                description="Print the state as seen by an attached reader (stats, dimensions, "
                            "generations, layer counts). The coordinator's own dump_state() is "
                            "richer but lives in its process.")
    p.add_argument("name", type=T.instance_name, metavar="NAME")
    p.set_defaults(func=cmd_dump)

    p = command("health", help="exit 0 if NAME is serving, 1 if not (for container probes)",
                description="One line on stdout and exit 0 when a live coordinator serves NAME and "
                            "accepts jobs; one line on stderr and exit 1 otherwise.")
    p.add_argument("name", type=T.instance_name, metavar="NAME")
    p.set_defaults(func=cmd_health)

    p = command("cleanup", help="remove what a crashed instance left in /dev/shm",
                description="Unlink every segment and semaphore of NAME; print one summary line. "
                            "Refuses (exit 1) while a coordinator of NAME is alive. With --dead "
                            "instead of NAME: every instance of yours whose coordinator is dead.")
    p.add_argument("name", type=T.instance_name, metavar="NAME", nargs="?")
    p.add_argument("--verbose", "-v", action="store_true", help="also list every object removed")
    p.add_argument("--dead", action="store_true",
                   help="remove every instance whose coordinator is dead (live ones, another user's "
                        "and another shmpool version's are left alone)")
    p.add_argument("--prefix", default="", metavar="TEXT", help="with --dead: only instance names starting so")
    p.add_argument("--older-than", type=T.non_negative_duration, default=None, metavar="DURATION",
                   help="with --dead: only instances unchanged this long (default 60s, so that one "
                        "still starting is never taken for dead)")
    p.set_defaults(func=cmd_cleanup)

    p = command("stress", help="create an instance and hammer it with clients; report",
                description="Create instance NAME (the run starts its own coordinator, so that it can "
                            "crystallize new generations and kill workers), run client threads in "
                            "several processes against it, then stop it and report torn reads, lost "
                            "jobs, leaks and latencies. Exit 1 if anything that must not happen did. "
                            "Durations take ms, s, m, h; a plain number is seconds.")
    p.add_argument("name", type=T.instance_name, metavar="NAME", help="instance to create for the run")
    p.add_argument("--clients", type=T.at_least_one, default=128, metavar="N", help="client threads (default 128)")
    p.add_argument("--duration", type=T.positive_duration, default=10.0, metavar="T", help="default 10s")
    p.add_argument("--crystallize-every", type=parse_duration, default=1.0, metavar="T",
                   help="publish a new generation of stress dimension 100 this often (default 1s; 0: never)")
    p.add_argument("--kill-workers", action=argparse.BooleanOptionalAction, default=False,
                   help="SIGKILL a random worker every ~2 s (default: no)")
    p.add_argument("--workers", type=T.some_workers, metavar="N",
                   help=f"worker processes, 1..{T.MAX_WORKERS} (default: CPU count)")
    p.add_argument("--data-dir", type=T.existing_dir, metavar="DIR",
                   help="folder of *.region files (default: the built-in sample)")
    p.add_argument("--out", type=T.writable_dir, metavar="DIR",
                   help="write stress-<timestamp>.json (and .png with matplotlib) here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_stress)

    p = command("completion", help="print a shell completion script",
                description="Print a completion script: eval \"$(shmpool completion bash)\" in ~/.bashrc "
                            "(zsh: the same with zsh, in ~/.zshrc).")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=lambda args: print(completion_script(parser, args.shell), end="") or 0)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = args.log_level or os.environ.get("SHMPOOL_LOG_LEVEL") or ("WARNING" if args.command == "stress"
                                                                     else "INFO")
    level = T.log_level(level) if args.log_level is None else level  # a bad variable is caught in main
    fmt = args.log_format or os.environ.get("SHMPOOL_LOG_FORMAT") or "text"
    if fmt not in ("text", "json"):
        raise UsageError(f"environment variable SHMPOOL_LOG_FORMAT={fmt!r}: one of text, json")
    if args.log_level:
        os.environ["SHMPOOL_LOG_LEVEL"] = level  # inherited by worker processes
    if args.log_format:
        os.environ["SHMPOOL_LOG_FORMAT"] = fmt
    # Applied when loguru is imported: by the first record (or a coordinator's start), not here,
    # so that `shmpool cleanup`, `health` or `stats` that log nothing skip loguru's import (~70 ms
    # of a ~170 ms command; shmpool/substrate/_log.py).
    when_loguru_imported(functools.partial(_configure_logging, level, fmt))
    import_loguru_for_records(level)


def _configure_logging(level: str, fmt: str, log: "Logger") -> None:
    log.enable("shmpool")  # every subpackage, the coordinator's and the workers' included
    log.remove()
    # Looked up at each message, so that output goes through rich's stderr proxy while a
    # progress bar is live instead of tearing it.
    if fmt == "json":
        log.add(_write_stderr, level=level, serialize=True)
    else:
        log.add(_write_stderr, level=level, format=LOG_FORMAT)


def _write_stderr(message: str) -> None:
    sys.stderr.write(message)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"shmpool {args.command}"
    try:
        try:
            _setup_logging(args)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"environment variable SHMPOOL_LOG_LEVEL: {exc}") from None
        if args.command == "serve":
            apply_env_defaults(args)
        status: int = args.func(args)
        return status
    except UsageError as exc:
        print(f"{prog}: error: {exc} (see {prog} --help)", file=sys.stderr)
        return 2
    except (RuntimeFailure, NotServing, MissingExtra) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `shmpool dump NAME | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ShmPoolError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
