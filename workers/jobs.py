"""What a worker may run: the built-in jobs, and the user jobs its coordinator allowed.

A job name is code: resolving ``"package.module:function"`` imports the module and runs the
function as ``fn(reader, *args)``, so a client free to name anything could run ``os:spawnlp``.
The coordinator therefore passes an allow-list (:class:`JobPolicy`) and a worker resolves only:

- the built-ins (``lookup``, ``load_contexts``, ``scan``, ``format_for_llm``, ``ping``);
- the names of ``jobs=`` (a mapping of name to a module-level function, or ``"module:function"``);
- ``"module:function"`` where the module is one of ``job_modules=`` or inside it, and the
  function is *defined* there (a function a module merely imports, like ``os.system``, is not).

Anything else is refused with UnknownJob before any import. The list travels to the workers as
JSON of ``module:qualname`` strings in ``SHMPOOL_JOBS`` (their environment, set by the
coordinator): names only, never pickle, and nothing a client can write.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from shmpool.context import ContextCollection, LoadedContext
from shmpool.errors import InvalidJob, UnknownJob
from shmpool.reader import Reader

__all__ = ["resolve_job", "BUILTIN_JOBS", "UnknownJob", "JobPolicy", "POLICY_ENV"]

POLICY_ENV = "SHMPOOL_JOBS"
_MODULE = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_MODULE_RE = re.compile(rf"^{_MODULE}$")
_TARGET_RE = re.compile(rf"^({_MODULE}):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")  # module:qualname
_NAME_RE = re.compile(r"^[A-Za-z_][\w.:-]{0,254}$")


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


def _within(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _target_of(job: str, fn: Any) -> str:
    """``module:qualname`` of a callable a worker can import by name; InvalidJob otherwise."""
    if isinstance(fn, str):
        if not _TARGET_RE.match(fn):
            raise InvalidJob(job=job, target=fn, reason="not a 'package.module:function' path")
        return fn
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    target = f"{module}:{qualname}"
    if not callable(fn) or not module or not qualname:
        raise InvalidJob(job=job, target=repr(fn), reason="not a function with a module and a name")
    if module == "__main__":
        raise InvalidJob(job=job, target=target, reason="defined in the script being run, which a worker "
                                                        "cannot import; move it into an importable module")
    if not _TARGET_RE.match(target):
        raise InvalidJob(job=job, target=target, reason="not a module-level function (a lambda or a "
                                                        "nested function cannot be imported by name)")
    try:
        found = _import_target(target)
    except (ImportError, AttributeError) as exc:
        raise InvalidJob(job=job, target=target, reason=f"cannot be found again by name: {exc}") from None
    if found is not fn:
        raise InvalidJob(job=job, target=target, reason="its name leads to another object")
    return target


def _import_target(target: str) -> Any:
    module_name, qualname = target.split(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class JobPolicy:
    """The user jobs a coordinator's workers may run, besides the built-ins.

    ``jobs`` maps a job name to a module-level function or a ``"module:function"`` string;
    ``modules`` are module prefixes whose own functions may be named as ``"module:function"``.
    The default (both empty) allows the built-ins only. Raises InvalidJob for an entry a worker
    could not import by name (a lambda, a nested function, one defined in ``__main__``), and for
    a malformed name or prefix.
    """
    jobs: Mapping[str, str] = field(default_factory=dict)  # name -> "module:qualname"
    modules: tuple[str, ...] = ()

    @classmethod
    def build(cls, jobs: Mapping[str, Callable[..., Any] | str] | None = None,
              modules: Iterable[str] = ()) -> "JobPolicy":
        if isinstance(modules, str):
            modules = (modules,)  # a lone prefix, not its letters
        prefixes = tuple(modules)
        for prefix in prefixes:
            if not isinstance(prefix, str) or not _MODULE_RE.match(prefix):
                raise InvalidJob(job="", target=str(prefix), reason="not a dotted module name like 'myjobs' "
                                                                    "or 'mypackage.jobs'")
        targets: dict[str, str] = {}
        for name, fn in (jobs or {}).items():
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise InvalidJob(job=str(name), target=str(fn), reason="a job name has 1-255 characters from "
                                                                       "A-Z a-z 0-9 _ . : -, starting with a letter or _")
            if name in BUILTIN_JOBS:
                raise InvalidJob(job=name, target=str(fn), reason="a built-in job has that name")
            targets[name] = _target_of(name, fn)
        return cls(targets, prefixes)

    def to_json(self) -> str:
        return json.dumps({"jobs": dict(self.jobs), "modules": list(self.modules)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "JobPolicy":
        """The policy a coordinator sent; the same checks as :meth:`build` on strings only."""
        data = json.loads(text)
        jobs, modules = data.get("jobs", {}), data.get("modules", [])
        if (not isinstance(jobs, dict) or not isinstance(modules, list)
                or not all(isinstance(t, str) for t in jobs.values())):
            raise ValueError("expected {'jobs': {name: 'module:function'}, 'modules': [prefix, ...]}")
        return cls.build(jobs, modules)

    def describe(self) -> str:
        parts = [f"built-ins ({', '.join(BUILTIN_JOBS)})"]
        if self.jobs:
            parts.append(f"jobs {', '.join(sorted(self.jobs))}")
        if self.modules:
            parts.append(f"functions of modules {', '.join(self.modules)}")
        return "; ".join(parts)

    def resolve(self, name: Any) -> Callable[..., Any]:
        """The function job ``name`` runs; UnknownJob if it is not allowed or cannot be found.

        Nothing is imported for a name outside the allow-list."""
        if not isinstance(name, str):
            raise UnknownJob(job=str(name), reason="a job name is a string")
        fn = BUILTIN_JOBS.get(name)
        if fn is not None:
            return fn
        target = self.jobs.get(name)
        if target is None:
            m = _TARGET_RE.match(name)
            if m is None or "." in m.group(2) or not _within(m.group(1), self.modules):
                raise UnknownJob(job=name, reason=self._refusal())
            target = name
        try:
            fn = _import_target(target)
        except ImportError as exc:
            raise UnknownJob(job=name, reason=f"cannot import {target.split(':')[0]}: {exc}") from None
        except AttributeError:
            raise UnknownJob(job=name, reason=f"{target.split(':')[0]} has no function "
                                              f"{target.split(':')[1]}") from None
        if not callable(fn):
            raise UnknownJob(job=name, reason=f"{target} is not callable")
        if target == name and not _within(getattr(fn, "__module__", "") or "", self.modules):
            # Reached through an allowed module, but defined elsewhere (``from os import system``).
            raise UnknownJob(job=name, reason=f"{target} is {getattr(fn, '__module__', '?')}'s, "
                                              "not defined in an allowed module")
        return fn

    def _refusal(self) -> str:
        return (f"not on this coordinator's allow-list, which has {self.describe()}; allow it with "
                "Coordinator(..., jobs={name: function}) or job_modules=[module prefix] "
                "(shmpool serve --job / --job-module)")


_policy: JobPolicy | None = None
_cache: dict[str, Callable[..., Any]] = {}


def current_policy() -> JobPolicy:
    """This worker's policy, read once from ``SHMPOOL_JOBS`` (absent: the built-ins only)."""
    global _policy
    if _policy is None:
        text = os.environ.get(POLICY_ENV)
        try:
            _policy = JobPolicy.from_json(text) if text else JobPolicy()
        except (ValueError, InvalidJob) as exc:
            raise UnknownJob(job="?", reason=f"this worker's {POLICY_ENV} allow-list is unusable: {exc}") from None
    return _policy


def resolve_job(name: str) -> Callable[..., Any]:
    """The function a worker runs for job ``name`` under its coordinator's allow-list."""
    fn = _cache.get(name) if isinstance(name, str) else None
    if fn is None:
        fn = current_policy().resolve(name)
        _cache[name] = fn
    return fn
