"""The one user job of scripts/chaos.py: it holds its slot for a while.

The built-in jobs finish in about a millisecond, too fast for a kill to find a slot RUNNING or
for eight submissions to prove that eight slots are held at once. Workers import this module by
name (``job_modules=["_chaos_jobs"]``, scripts/ on their PYTHONPATH), so it imports nothing
beyond the standard library.
"""

from __future__ import annotations

import os
import time


def slow(reader, seconds: float, tag):
    time.sleep(seconds)
    return tag


def held(reader, release: str, tag, limit: float = 60.0):
    """Hold the slot until the file ``release`` exists (at most ``limit`` s, so a failed run ends)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return tag
