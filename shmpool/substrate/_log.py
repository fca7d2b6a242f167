"""shmpool's handle on loguru's ``logger``, which imports loguru only when a process needs it.

loguru stays shmpool's logging library; what changes is when it is imported. Importing loguru
costs ~80 ms of CPU (it imports asyncio, multiprocessing, logging, inspect and json), more than
a third of a worker's start, and most shmpool processes never emit a record: shmpool's records
are disabled (``logger.disable("shmpool")``, loguru's advice to libraries) until a coordinator,
the CLI or the user enables them, and enabling them needs loguru imported. So while no one has
imported loguru, a record from shmpool would be dropped anyway, and :data:`logger` drops it
without importing anything; any other use (``add``, ``remove``, ``enable``...) imports loguru
and goes to the real logger, and once loguru is imported every call does.

The state loguru would hold if shmpool had imported it (shmpool disabled; a worker's default
sink removed) must still be in place when someone imports it later, before they can change it:
:func:`when_loguru_imported` runs such a step right after loguru's module has executed, in the
importing thread, through a one-shot finder on ``sys.meta_path`` (or at once if loguru is
already imported). So a user who imports loguru after shmpool and calls
``logger.enable("shmpool")`` gets shmpool's records, exactly as when shmpool imported it first.

Rejected: a proxy that imports loguru at its first record (a disabled debug line at every
worker's start would pay the whole import), and applying ``disable`` at that moment (it would
undo an ``enable`` the user made in between).
"""

from __future__ import annotations

import sys

from .fork_safe import ForkSafeLock
from typing import TYPE_CHECKING, Any, Callable, cast

if TYPE_CHECKING:
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    from loguru import Logger

__all__ = ["logger", "when_loguru_imported", "import_loguru_for_records"]

_LOGURU = "loguru"
# The methods that only emit a record, with loguru's severity of their level. While loguru is not
# imported a shmpool record is dropped (see the module docstring), unless it is at or above the
# floor a process set with import_loguru_for_records(). ``log`` names its level in an argument
# (so it imports loguru once any floor is set); ``opt`` configures a record, so while every record
# is dropped it returns the same stand-in.
_RECORD_LEVELS = {"trace": 5, "debug": 10, "info": 20, "success": 25, "warning": 30, "error": 40, "critical": 50,
                  "exception": 40}
_LEVEL_NUMBERS = {name.upper(): number for name, number in _RECORD_LEVELS.items() if name != "exception"}
_DROP_ALL = 100  # above CRITICAL: the floor while no process has asked for records

_lock = ForkSafeLock()  # made afresh in a forked child (shmpool/substrate/fork_safe.py)
_pending: list[Callable[["Logger"], None]] = []
_record_floor = _DROP_ALL  # lowered by import_loguru_for_records()


def _drop(*_args: Any, **_kwargs: Any) -> None:
    """A record of shmpool's while loguru is not imported: disabled, so nothing to do."""


class _LazyLogger:
    """Stands in for ``loguru.logger`` (see the module docstring)."""

    def __getattr__(self, name: str) -> Any:
        if _LOGURU not in sys.modules:
            level = _RECORD_LEVELS.get(name)
            if level is not None and level < _record_floor:
                return _drop
            if name in ("log", "opt") and _record_floor == _DROP_ALL:
                return _drop if name == "log" else (lambda *_args, **_kwargs: self)
        from loguru import logger as real  # waits for an import in progress in another thread

        value = getattr(real, name)
        # loguru's logger is one object per process and its methods stay bound to it: the next
        # lookup of this name is a plain attribute read, without __getattr__.
        self.__dict__[name] = value
        return value


def when_loguru_imported(step: Callable[["Logger"], None]) -> None:
    """Run ``step(loguru.logger)`` now if loguru is imported, else right after its import.

    Steps run in the order given, in the thread that imports loguru, before that import returns.
    """
    with _lock:
        if _LOGURU not in sys.modules:
            if not _pending:
                sys.meta_path.insert(0, _AfterLoguruImport())
            _pending.append(step)
            return
    from loguru import logger as real

    step(real)


def import_loguru_for_records(level: str = "TRACE") -> None:
    """From now on a record at ``level`` or above imports loguru instead of being dropped.

    For a process that has said where shmpool's records go, with a :func:`when_loguru_imported`
    step that enables them from ``level`` on (the CLI; a coordinator's warnings on stderr): one
    that logs nothing at that level never imports loguru, and the first such record imports it,
    runs that step, and is written like every later one. Lower records are dropped meanwhile, as
    the step's sinks would drop them. The lowest level asked for wins.
    """
    global _record_floor
    with _lock:
        _record_floor = min(_record_floor, _LEVEL_NUMBERS[level.upper()])


class _AfterLoguruImport:
    """A one-shot ``sys.meta_path`` finder: loguru's own spec, whose loader runs the pending steps
    after loguru's module has executed."""

    _searching = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if fullname != _LOGURU or self._searching:
            return None
        import importlib.util

        self._searching = True  # the search below asks every finder again, this one included
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching = False
        if spec is None or spec.loader is None:
            return spec
        spec.loader = cast("Loader", _RunStepsAfter(spec.loader, self))  # a Loader by duck typing
        return spec


class _RunStepsAfter:
    """loguru's loader, with the pending steps run once its module has executed."""

    def __init__(self, loader: Any, finder: _AfterLoguruImport) -> None:
        self._loader = loader
        self._finder = finder

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        created: ModuleType | None = self._loader.create_module(spec)
        return created

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        with _lock:
            # Removed only now: a find_spec("loguru") that imports nothing must leave it armed.
            if self._finder in sys.meta_path:
                sys.meta_path.remove(self._finder)
            steps = list(_pending)
            _pending.clear()
        for step in steps:
            step(module.logger)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, is_package, ...
        return getattr(self._loader, name)


if TYPE_CHECKING:
    from loguru import logger as logger
else:
    logger = _LazyLogger()
