"""Argument types and checks of the ``shmpool`` command: every user mistake caught before start-up.

Each type raises ``argparse.ArgumentTypeError`` with a message that names the bad value and
what would do, so that the parser's one-line error (see ``cli.OneLineParser``) says it all.
Checks that need more than one argument, or the file system, run in :func:`check_serve` and
friends right after parsing, still before anything is created.

Sizes take SI units as written (``MB`` = 10**6 bytes, also ``M``, ``k``/``K``, ``G``, ``T``) and
IEC units (``MiB`` = 2**20, also ``Mi``, ``Ki``, ``Gi``, ``Ti``); a plain number is bytes. This
follows Kubernetes' quantities: the unit means what it says, so ``280MB`` and ``280MiB`` differ
by 4.9%, which is the point.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
from pathlib import Path
from typing import Any, Callable, TypeVar

from shmpool.substrate import limits
from shmpool.substrate.names import validate_name

__all__ = ["parse_size", "parse_duration", "instance_name", "job_entry", "count", "at_least_one", "port",
           "log_level", "existing_dir", "readable_file", "writable_dir", "positive_duration", "seed",
           "ENV_DEFAULTS", "MIN_MEMORY_LIMIT", "MAX_WORKERS", "MAX_POOL_GROWTH", "probe_bind"]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*(?:([kmgt])(i?)b?|b?)\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_POWERS = "kmgt"

# Below this the default pools (4 KiB .. 1 MiB blocks) cannot hold even one typical dimension:
# 1KB used to start, load nothing and exit 0.
MIN_MEMORY_LIMIT = 2**20
# More workers than this is a typo (shmpool.substrate.limits, shared with Coordinator(workers=)).
MAX_WORKERS = limits.MAX_WORKERS
# Growth rows are reserved in the control segment per configured pool; past this it is a typo.
MAX_POOL_GROWTH = 64
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")

SIZE_HELP = ("sizes take SI units (kB, MB, GB: powers of 1000) or IEC units (KiB, MiB, GiB: powers of "
             "1024) as written; a plain number is bytes")


def parse_size(text: str) -> int:
    """``"280MB"`` -> 280000000, ``"280MiB"`` -> 293601280, ``"4096"`` -> 4096. Raises ArgumentTypeError."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 280MiB, 300MB, 1GiB or a byte count)")
    number, unit, iec = float(m.group(1)), (m.group(2) or "").lower(), m.group(3)
    base = 1024 if iec else 1000
    size = number * base ** (_POWERS.index(unit) + 1) if unit else number
    if not math.isfinite(size) or size != int(size):
        raise argparse.ArgumentTypeError(f"not a whole number of bytes: {text!r}")
    if size <= 0:
        raise argparse.ArgumentTypeError(f"a size must be more than 0 bytes, got {text!r}")
    return int(size)


def memory_limit(text: str) -> int:
    size = parse_size(text)
    if size < MIN_MEMORY_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} ({size} bytes) is below the smallest memory limit that "
                                         f"holds any data, 1MiB ({MIN_MEMORY_LIMIT} bytes)")
    return size


def parse_duration(text: str) -> float:
    """``"10s"`` -> 10.0; also ``ms``, ``m``, ``h``; a plain number is seconds. Raises ArgumentTypeError."""
    m = _DURATION_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 10s, 500ms, 2m)")
    return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]


def positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0 s, got {text!r}")
    return value


def non_negative_duration(text: str) -> float:
    value = parse_duration(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 s or longer, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def count(text: str, *, most: int | None = None) -> int:
    """A whole number >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    if most is not None and value > most:
        raise argparse.ArgumentTypeError(f"must be at most {most}, got {value}")
    return value


def workers(text: str) -> int:
    return count(text, most=MAX_WORKERS)


def some_workers(text: str) -> int:
    """Workers for a run that needs at least one (stress)."""
    value = workers(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def pool_growth(text: str) -> int:
    return count(text, most=MAX_POOL_GROWTH)


def seed(text: str) -> int:
    return count(text, most=2**32 - 1)  # numpy's seed range


def at_least_one(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 0..65535 (0 picks a free one), got {value}")
    return value


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown log level {text!r}; one of {', '.join(LOG_LEVELS)}")
    return level


def instance_name(text: str) -> str:
    try:
        return validate_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def job_entry(text: str) -> tuple[str, str]:
    name, sep, target = text.partition("=")
    if not sep or not name or ":" not in target:
        raise argparse.ArgumentTypeError(f"not NAME=module:function: {text!r}")
    return name, target


def existing_dir(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text} is not readable")
    return text


def readable_file(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text} is not readable")
    return text


def writable_dir(text: str) -> str:
    """A directory that exists and is writable, or that can be created (its nearest existing
    parent is a writable directory)."""
    path = Path(text)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory ({probe} is a file)" if probe != path
                                         else f"{text} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text} is not writable" if probe == path
                                         else f"{text} cannot be created: {probe} is not writable")
    return text


def bad_address(addr: str) -> str | None:
    """Why ``addr`` is no address to bind (the resolver's words), or None."""
    try:
        socket.getaddrinfo(addr, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"bad address {addr!r}: {exc.strerror}"
    return None


def probe_bind(addr: str, port_: int) -> str | None:
    """Why ``addr:port`` cannot be served (taken, bad address), or None; checked before start-up
    so a taken port costs no coordinator start. A race with another binder stays possible, and
    the real bind after start-up still reports it."""
    try:
        infos = socket.getaddrinfo(addr, port_, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"bad address {addr!r}: {exc.strerror}"
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a yes/no value: {text!r} (1/0, true/false, yes/no, on/off)")


_T = TypeVar("_T")


def _list(item: Callable[[str], _T]) -> Callable[[str], list[_T]]:
    def parse(text: str) -> list[_T]:
        return [item(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    return parse


# serve's flags that an environment variable may default (flags on the command line win):
# dest -> (variable, type of its value).
ENV_DEFAULTS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "data_dir": ("SHMPOOL_DATA_DIR", existing_dir),
    "sample": ("SHMPOOL_SAMPLE", _flag),
    "workers": ("SHMPOOL_WORKERS", workers),
    "memory_limit": ("SHMPOOL_MEMORY_LIMIT", memory_limit),
    "metrics_port": ("SHMPOOL_METRICS_PORT", port),
    "metrics_addr": ("SHMPOOL_METRICS_ADDR", str),
    "evict": ("SHMPOOL_EVICT", _flag),
    "mapped_regions": ("SHMPOOL_MAPPED_REGIONS", _flag),
    "compress_cold": ("SHMPOOL_COMPRESS_COLD", _flag),
    "huge_pages": ("SHMPOOL_HUGE_PAGES", _flag),
    "pool_growth": ("SHMPOOL_POOL_GROWTH", pool_growth),
    "spill_dir": ("SHMPOOL_SPILL_DIR", writable_dir),
    "job_modules": ("SHMPOOL_JOB_MODULES", _list(str)),
    "jobs": ("SHMPOOL_JOBS", _list(job_entry)),
}
