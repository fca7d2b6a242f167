"""rich, imported only by the commands that draw with it (``stats`` tables, ``stress`` report).

rich is the ``cli`` extra, not a dependency of the library: ``pip install shmpool`` gives a
``shmpool`` command whose serve, build, dump, cleanup, health and ``stats --json`` work without
it, and these two commands say in one line what to install (before a stress run starts).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["MissingExtra", "rich", "available"]


class MissingExtra(Exception):
    """An optional package a command needs is not installed; the message is the one-line fix."""


def available() -> bool:
    return importlib.util.find_spec("rich") is not None


def rich(module: str, *, instead: str = "") -> ModuleType:
    """``rich.<module>``, or MissingExtra saying how to get it (and ``instead``, what works without)."""
    try:
        return importlib.import_module(f"rich.{module}")
    except ImportError:
        alternative = f" ({instead})" if instead else ""
        raise MissingExtra(f"this needs the rich package: pip install 'shmpool[cli]'{alternative}") from None
