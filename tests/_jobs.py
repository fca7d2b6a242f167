"""User jobs for the worker tests, named by dotted path ("_jobs:echo")."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def echo(reader, *args, **kwargs):
    return {"args": list(args), "kwargs": kwargs, "pid": os.getpid()}


def boom(reader, message):
    raise ValueError(message)


def slow(reader, seconds, tag):
    time.sleep(seconds)
    return tag


def kill_worker(reader):
    os.kill(os.getpid(), signal.SIGKILL)


def kill_worker_once(reader, marker, tag):
    """Kill the first worker that runs it; succeed on the retry."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        time.sleep(0.3)  # long enough for the test to see it running
        os.kill(os.getpid(), signal.SIGKILL)
    return tag


def big(reader, nbytes):
    return bytes(range(256)) * (nbytes // 256)


def first_layers(reader, dimension_id, count):
    """Return contexts: they travel as references and are resolved in the client."""
    return [reader.load_layer_context(dimension_id, lid) for lid in reader.layer_ids(dimension_id)[:count]]


def slow_big(reader, seconds, nbytes):
    time.sleep(seconds)
    return big(reader, nbytes)


def double(reader, x):
    return 2 * x


def report_pid_then_sleep(reader, pid_file, seconds):
    """Say which worker runs it (atomically: the test polls for the file), then stay busy."""
    tmp = Path(f"{pid_file}.tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(pid_file)
    time.sleep(seconds)
    return "slept"


def wait_for_path(reader, path, tag, limit=60.0):
    """Hold the slot until the test creates ``path`` (at most ``limit`` s, so a failed test ends)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return tag


def huge_int(reader):
    """A result msgpack cannot carry: an int beyond 64 bits."""
    return {"fine": 1, "huge": [2 ** 70]}


def same(reader, value):
    """Its argument back, as it arrived (an ndarray stays an ndarray)."""
    return value


def describe_array(reader, array):
    """What the worker received, in plain values: type, dtype, shape, order and a checksum."""
    import numpy as np
    return {"type": type(array).__name__, "dtype": array.dtype.str, "shape": list(array.shape),
            "f_order": bool(array.flags.f_contiguous and not array.flags.c_contiguous),
            "writeable": bool(array.flags.writeable), "sum": float(np.asarray(array, dtype=np.float64).sum())}


def ramp(reader, n, dtype, order):
    """An ndarray made in the worker: arange(n) of ``dtype``, 2-D in ``order`` when n is even."""
    import numpy as np
    values = np.arange(n, dtype=dtype)
    return values.reshape((2, n // 2), order=order) if n % 2 == 0 else values
