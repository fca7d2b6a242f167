"""What a worker may run: the built-in jobs, and the user jobs its coordinator allowed.

A job name is code: resolving ``"package.module:function"`` imports the module and runs the
function as ``fn(reader, *args)``, so a client free to name anything could run ``os:spawnlp``.
The coordinator therefore passes an allow-list (:class:`JobPolicy`) and a worker resolves only:

- the built-ins (``lookup``, ``load_contexts``, ``scan``, ``format_for_llm``, ``ping``);
- the names of ``jobs=`` (a mapping of name to a module-level function, or ``"module:function"``);
- ``"module:function"`` where the module is one of ``job_modules=`` or inside it, and the
  function is *defined* there (a function a module merely imports, like ``os.system``, is not).

A *callable* given to ``Client.submit`` arrives as its ``module:qualname`` and runs as
``fn(*args, **kwargs)`` (no reader: it asks ``shmpool.worker_reader()``). It is allowed when it is
a function of ``jobs=``, one defined in ``job_modules=``, or one of the harmless defaults: the pure
builtins of SAFE_BUILTINS (``len``, ``pow``, ``divmod``, ...), the functions of ``math`` and
``time.sleep``.

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

from shmpool.jobs.callables import MODULE_RE, TARGET_RE, home_module, target_of
from shmpool.data.context import ContextCollection, LoadedContext
from shmpool.errors import InvalidArgument, InvalidJob, UnknownJob
from shmpool.data.reader import Reader

__all__ = ["resolve_job", "BUILTIN_JOBS", "UnknownJob", "JobPolicy", "POLICY_ENV"]

POLICY_ENV = "SHMPOOL_JOBS"
_MODULE_RE, _TARGET_RE = MODULE_RE, TARGET_RE
_NAME_RE = re.compile(r"^[A-Za-z_][\w.:-]{0,254}$")


def lookup(reader: Reader, dimension_id: int, layer_id: int) -> LoadedContext:
    return reader.load_layer_context(dimension_id, layer_id)


def load_contexts(reader: Reader, path: list[Any], strict: bool = True) -> ContextCollection:
    return reader.load_contexts([tuple(step) for step in path], strict=strict)


def scan(reader: Reader, dimension_id: int, keyword: str | None = None) -> list[LoadedContext]:
    return list(reader.scan(dimension_id, keyword))


def format_for_llm(reader: Reader, path: list[Any], strict: bool = False) -> str:
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
    """``module:qualname`` of an allow-list entry a worker can import by name; InvalidJob otherwise."""
    if isinstance(fn, str):
        if not _TARGET_RE.match(fn):
            raise InvalidJob(job=job, target=fn, reason="not a 'package.module:function' path")
        return fn
    return target_of(fn, job=job)


# Callables any client may submit without an allow-list entry: functions of the standard library
# that compute on their arguments and touch nothing else (no files, imports, processes or
# attributes of other objects), so `submit(pow, 2, 8)`, `map(divmod, ...)` work as with any
# Executor. Deliberately absent: eval, exec, compile, open, __import__, getattr/setattr/delattr,
# globals/vars, input/print, breakpoint.
SAFE_BUILTINS = frozenset("""
    abs all any ascii bin bool bytes chr dict divmod float format frozenset hex int len list max min
    oct ord pow repr round set sorted str sum tuple
""".split())
DEFAULT_CALLABLES = frozenset({f"builtins:{name}" for name in SAFE_BUILTINS} | {"time:sleep"})
DEFAULT_CALLABLE_MODULES = ("math",)  # every function of math is pure


# Modules whose top level raised in this worker: what it raised (a missing module, ImportError,
# is tried again: it may be installed meanwhile, and trying runs none of its code).
_raised_at_import: dict[str, str] = {}


def _load(job: str, target: str, where: str = "") -> object:
    """What ``target`` ("module:qualname") names, for ``job``; UnknownJob saying why if nothing.

    object, not a callable: the caller checks that. The import and the attribute lookup are
    told apart, so that an AttributeError the module raises while it runs is not reported as
    a missing function."""
    module_name, qualname = target.split(":")
    raised = _raised_at_import.get(module_name)
    if raised is not None:
        raise UnknownJob(job=job, reason=f"cannot import {module_name}{where}: {raised}")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownJob(job=job, reason=f"cannot import {module_name}{where}: {exc}") from None
    except (Exception, SystemExit) as exc:
        # The module itself raised while it ran (a Coordinator started at import, a script's
        # sys.exit() without a __main__ guard): the job is just as unknown, and the worker
        # lives on for the jobs it can run. Remembered, as a module that imported is: its top
        # level ran once, and a side effect there must not repeat with every job naming it.
        raised = _raised_at_import[module_name] = f"it raised {type(exc).__name__}: {exc}"
        raise UnknownJob(job=job, reason=f"cannot import {module_name}{where}: {raised}") from None
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UnknownJob(job=job, reason=f"{module_name} has no function {qualname}") from None
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
            raise InvalidArgument(argument="policy", value=text,
                                  reason="expected {'jobs': {name: 'module:function'}, 'modules': [prefix, ...]}")
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
        builtin = BUILTIN_JOBS.get(name)
        if builtin is not None:
            return builtin
        target = self.jobs.get(name)
        if target is None:
            m = _TARGET_RE.match(name)
            if m is None or "." in m.group(2) or not _within(m.group(1), self.modules):
                raise UnknownJob(job=name, reason=self._refusal())
            target = name
        fn = _load(name, target)
        if not callable(fn):
            raise UnknownJob(job=name, reason=f"{target} is not callable")
        if target == name and not _within(home_module(fn), self.modules):
            # Reached through an allowed module, but defined elsewhere (``from os import system``).
            raise UnknownJob(job=name, reason=f"{target} is {home_module(fn) or '?'}'s, "
                                              "not defined in an allowed module")
        return fn

    def resolve_callable(self, target: Any) -> Callable[..., Any]:
        """The function a callable submitted as ``"module:qualname"`` names; UnknownJob unless
        allowed: a safe builtin (``len``, ``pow``, ``divmod``, ...), a function of ``math``,
        ``time.sleep``, a function of ``jobs=`` or one defined in ``job_modules``.

        Nothing is imported for a target outside the allow-list."""
        if not isinstance(target, str):
            raise UnknownJob(job=str(target), reason="a callable travels as a 'module:function' string")
        m = _TARGET_RE.match(target)
        if m is None or "." in m.group(2):
            raise UnknownJob(job=target, reason="not a module-level 'module:function'")
        module = m.group(1)
        listed = (target in DEFAULT_CALLABLES or module in DEFAULT_CALLABLE_MODULES
                  or target in self.jobs.values())
        if not listed and not _within(module, self.modules):
            raise UnknownJob(job=target, reason=self._refusal(callable_=True))
        fn = _load(target, target, " in the worker")
        if not callable(fn):
            raise UnknownJob(job=target, reason=f"{target} is not callable")
        if not listed and not _within(home_module(fn), self.modules):
            raise UnknownJob(job=target, reason=f"{target} is {home_module(fn) or '?'}'s, "
                                                "not defined in an allowed module")
        return fn

    def _refusal(self, callable_: bool = False) -> str:
        if callable_:
            return (f"not on this coordinator's allow-list, which has {self.describe()}, and for callables "
                    "also the pure builtins (len, pow, divmod, sorted, ...), the functions of math and "
                    "time.sleep; allow it with Coordinator(..., job_modules=[its module]) or jobs={name: "
                    "function} (shmpool serve --job-module / --job)")

        return (f"not on this coordinator's allow-list, which has {self.describe()}; allow it with "
                "Coordinator(..., jobs={name: function}) or job_modules=[module prefix] "
                "(shmpool serve --job / --job-module)")


_policy: JobPolicy | None = None
_cache: dict[tuple[str, bool], Callable[..., Any]] = {}


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


def resolve_job(name: str, *, plain: bool = False) -> Callable[..., Any]:
    """The function a worker runs for job ``name`` under its coordinator's allow-list.

    ``plain``: ``name`` is a submitted callable's ``module:qualname`` (run as ``fn(*args)``),
    else a job name (run as ``fn(reader, *args)``)."""
    key = (name, plain) if isinstance(name, str) else None
    fn = _cache.get(key) if key is not None else None
    if fn is None:
        policy = current_policy()
        fn = policy.resolve_callable(name) if plain else policy.resolve(name)
        _cache[key] = fn
    return fn
