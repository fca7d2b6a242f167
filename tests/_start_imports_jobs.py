"""User jobs for tests/test_process_start_imports.py ("_start_imports_jobs:loaded")."""

from __future__ import annotations

import sys
from typing import Any


def loaded(reader: Any, names: list[str]) -> list[str]:
    """Which of ``names`` this worker process has imported so far."""
    return [name for name in names if name in sys.modules]


def log_through_loguru(reader: Any, marker: str) -> bool:
    """A job that logs with loguru itself, as user code may; True if loguru was new here."""
    fresh = "loguru" not in sys.modules
    from loguru import logger

    logger.warning(marker)
    return fresh
