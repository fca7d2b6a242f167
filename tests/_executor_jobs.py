"""Plain functions (no reader argument) for the Executor tests: importable by ProcessPoolExecutor
workers and, allowed with job_modules=["_executor_jobs"], by shmpool workers alike."""

from __future__ import annotations

import os
import time

import shmpool

INITIALIZED: list = []  # what the worker initializer saw, in this process


def mul(x, y):
    return x * y


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def wait_for_path(path, value=None, limit=60.0):
    """Run until the test creates ``path`` (at most ``limit`` s, so a failed test ends): a job that
    cannot finish before the test says so, whatever the load."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def fail_with(kind, message):
    raise {"ValueError": ValueError, "KeyError": KeyError, "RuntimeError": RuntimeError}[kind](message)


class CustomError(Exception):
    """Rebuilt as itself in a client that imported this module."""


class FussyError(Exception):
    def __init__(self, a, b):  # args are (a,) only: cannot be rebuilt from them
        super().__init__(a)
        self.b = b


def raise_custom(message):
    raise CustomError(message)


def raise_fussy():
    raise FussyError("a", "b")


def pid():
    return os.getpid()


def init(tag, marker_dir=None):
    """A worker initializer: record that it ran in this process (and once only)."""
    INITIALIZED.append((tag, os.getpid()))
    if marker_dir is not None:
        with open(os.path.join(marker_dir, f"init-{os.getpid()}"), "a") as fh:
            fh.write(tag + "\n")


def init_fails(message, unless_file=None):
    if unless_file is None or not os.path.exists(unless_file):
        raise RuntimeError(message)


def initialized():
    return [list(entry) for entry in INITIALIZED]


def layer_length(dimension_id, layer_id):
    """A plain callable that reads through the worker's own Reader."""
    return len(shmpool.worker_reader().load_layer_context(dimension_id, layer_id).content)


def hang():
    while True:
        time.sleep(0.05)


def slow_square(x):
    time.sleep(0.01)
    return x * x


def with_reader(reader, x):
    """A job *named* by a string runs reader first, as every named job does."""
    return [type(reader).__name__, x]
