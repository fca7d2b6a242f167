"""What every ``scripts/bench_*.py`` shares: machine facts, percentiles, a timer, the JSON result.

A result is one JSON document on stdout (so it can be piped) and, unless ``--no-save``, the same
document in ``bench-results/<name>.json`` at the repository root (git-ignored). Every document
carries the facts of the machine it was measured on, because a latency without its CPU is not a
number anyone can compare against.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import signal
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["RESULTS_DIR", "clock", "timer", "machine_facts", "clock_overhead_ns", "percentiles",
           "argument_parser", "write_result", "instance_name", "instance_names", "shm_leftovers",
           "quiet_logging", "raise_on_sigterm", "collect", "reap"]

RESULTS_DIR = Path(__file__).resolve().parent.parent / "bench-results"

clock = time.perf_counter_ns
"""The one clock of every benchmark: monotonic, integer nanoseconds. Bind it to a local in hot loops."""


class timer:
    """``with timer() as t: ...`` then ``t.ns`` (int) or ``t.us`` (float); perf_counter_ns underneath."""

    __slots__ = ("start", "ns")

    def __enter__(self) -> "timer":
        self.ns = 0
        self.start = clock()
        return self

    def __exit__(self, *exc) -> None:
        self.ns = clock() - self.start

    @property
    def us(self) -> float:
        return self.ns / 1000


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def clock_overhead_ns(samples: int = 10_000) -> int:
    """Median cost of two back-to-back clock reads: the floor under every timed sample."""
    c = clock
    deltas = np.empty(samples, dtype=np.int64)
    for i in range(samples):
        t0 = c()
        deltas[i] = c() - t0
    return int(np.median(deltas))


def machine_facts() -> dict:
    """CPU, core counts, Python, numpy, platform and UTC date of this run."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # Tails are only as quiet as the machine: a busy neighbour shows up in p99 first.
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "clock_overhead_ns": clock_overhead_ns(),
    }


def percentiles(samples_ns) -> dict:
    """Summary in microseconds of latency samples given in nanoseconds."""
    a = np.asarray(samples_ns, dtype=np.float64)
    if not a.size:
        return {"median_us": None, "p99_us": None, "p999_us": None, "min_us": None,
                "max_us": None, "mean_us": None, "n": 0}
    med, p99, p999 = np.percentile(a, [50, 99, 99.9]) / 1000
    return {
        "median_us": round(float(med), 2),
        "p99_us": round(float(p99), 2),
        "p999_us": round(float(p999), 2),
        "min_us": round(float(a.min()) / 1000, 2),
        "max_us": round(float(a.max()) / 1000, 2),
        "mean_us": round(float(a.mean()) / 1000, 2),
        "n": int(a.size),
    }


def argument_parser(description: str) -> argparse.ArgumentParser:
    """A parser that already knows the flags every benchmark takes (``--no-save``, ``--out-dir``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--no-save", action="store_true",
                        help="print the JSON only; do not write bench-results/<name>.json")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"where to write the result (default {RESULTS_DIR})")
    return parser


def write_result(name: str, payload: dict, out_dir: Path | None = None, *, save: bool = True,
                 out_file: Path | None = None) -> dict:
    """Print ``{"benchmark": name, "machine": ..., **payload}`` as JSON; also save it unless not ``save``.

    Returns the document. The file is ``out_file`` if given, else ``<out_dir or bench-results>/<name>.json``;
    it is overwritten.
    """
    document = {"benchmark": name, "machine": machine_facts(), **payload}
    text = json.dumps(document, indent=2)
    if save:
        if out_file is not None:
            target = Path(out_file)
        else:
            target = (Path(out_dir) if out_dir is not None else RESULTS_DIR) / f"{name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return document


# ----------------------------------------------------------------------------- instances and cleanup

_instance_names: list[str] = []


def instance_name(prefix: str) -> str:
    """A fresh instance name ``<prefix>-<8 hex>``, remembered for :func:`shm_leftovers`.

    Random (``secrets``) so that two benchmark runs, or a run beside the test suite, never share
    an instance, and one prefix per script so that leftovers name the script that made them.
    """
    name = f"{prefix}-{secrets.token_hex(4)}"
    _instance_names.append(name)
    return name


def instance_names() -> list[str]:
    """Every name :func:`instance_name` handed out in this process, in order."""
    return list(_instance_names)


def shm_leftovers(names=None) -> list[str]:
    """Segments and semaphores of ``names`` (default: every :func:`instance_name`) still in /dev/shm."""
    from shmpool.substrate.names import list_objects  # here, so that benchlib itself needs only numpy

    names = _instance_names if names is None else names
    return sorted(obj for name in names for group in list_objects(name) for obj in group)


def quiet_logging(level: str = "WARNING") -> None:
    """Route loguru to stderr at ``level`` only: INFO lines (one per published dimension) are not
    formatted or written inside timed regions, and stdout stays pure JSON."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=level)


def _sigterm_to_exit(signum, _frame):
    raise SystemExit(128 + signum)


def raise_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a killed benchmark still runs its ``finally`` blocks
    (stop coordinators, unlink segments)."""
    signal.signal(signal.SIGTERM, _sigterm_to_exit)


# ----------------------------------------------------------------------------- child processes

def collect(results, procs, expected: int, timeout: float) -> list:
    """``expected`` items from children that put ``(kind, item)`` on ``results``; returns the items.

    A child reports failure as ``("error", text)``. Raises RuntimeError naming any child that
    raised, died without reporting, or did not report within ``timeout`` seconds.
    """
    import queue

    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < expected:
        try:
            kind, item = results.get(timeout=0.5)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError("child process died: " + ", ".join(f"pid {p.pid} exit code {p.exitcode}"
                                                                       for p in dead)) from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"child processes gave {len(out)} of {expected} results in {timeout} s") from None
            continue
        if kind == "error":
            raise RuntimeError(f"child process raised: {item}")
        out.append(item)
    return out


def reap(procs) -> None:
    """Join child processes, terminating any that do not exit within 10 s."""
    for p in procs:
        p.join(10)
        if p.exitcode is None:
            p.terminate()
            p.join(5)
