"""A job module that leaves a mark when imported: proves whether a worker imported it at all."""

from __future__ import annotations

import os
from os import system as os_system  # noqa: F401  (reachable by name here, but not defined here)
from pathlib import Path

Path(os.environ["SHMPOOL_TEST_CANARY"]).write_text(str(os.getpid()))


def touch(reader):
    return "imported"
