"""What a worker can run: the built-in jobs, and user jobs named by dotted path.

A user job is ``"package.module:function"``; the function receives the worker's Reader first,
then the submitted arguments. Jobs are looked up by name in the worker, so nothing executable
ever crosses the job board: only the name and msgpack data. Any module importable by the worker
can be named; the job board is readable only by the instance's user (mode 0600).
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any, Callable

from shmpool.context import ContextCollection, LoadedContext
from shmpool.errors import ShmPoolError
from shmpool.reader import Reader

__all__ = ["resolve_job", "BUILTIN_JOBS", "UnknownJob"]

_DOTTED = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class UnknownJob(ShmPoolError, LookupError):
    def __init__(self, *, job: str, reason: str) -> None:
        super().__init__(f"unknown job {job!r}: {reason}", job=job, reason=reason)


def lookup(reader: Reader, dimension_id: int, layer_id: int) -> LoadedContext:
    return reader.load_layer_context(dimension_id, layer_id)


def load_contexts(reader: Reader, path: list, strict: bool = True) -> ContextCollection:
    return reader.load_contexts([tuple(step) for step in path], strict=strict)


def scan(reader: Reader, dimension_id: int, keyword: str | None = None) -> list[LoadedContext]:
    return list(reader.scan(dimension_id, keyword))


def format_for_llm(reader: Reader, path: list, strict: bool = False) -> str:
    return reader.load_contexts([tuple(step) for step in path], strict=strict).format_for_llm()


def ping(reader: Reader) -> int:
    return os.getpid()


BUILTIN_JOBS: dict[str, Callable[..., Any]] = {
    "lookup": lookup,
    "load_contexts": load_contexts,
    "scan": scan,
    "format_for_llm": format_for_llm,
    "ping": ping,
}

_cache: dict[str, Callable[..., Any]] = {}


def resolve_job(name: str) -> Callable[..., Any]:
    fn = BUILTIN_JOBS.get(name) or _cache.get(name)
    if fn is not None:
        return fn
    if not isinstance(name, str) or not _DOTTED.match(name):
        raise UnknownJob(job=str(name), reason=f"not a built-in ({', '.join(BUILTIN_JOBS)}) "
                                              "and not a 'package.module:function' path")
    module_name, func_name = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownJob(job=name, reason=f"cannot import {module_name}: {exc}") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise UnknownJob(job=name, reason=f"{module_name} has no function {func_name}")
    _cache[name] = fn
    return fn
