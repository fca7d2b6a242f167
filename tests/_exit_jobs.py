"""Jobs that end their own process the polite way (tests/test_worker_job_exits.py): allowed with
``job_modules=["_exit_jobs"]``, run as plain callables."""

from __future__ import annotations

import os
import sys


def exit_with(code):
    sys.exit(code)


def interrupt():
    raise KeyboardInterrupt("pressed in a job")


def pid():
    return os.getpid()
