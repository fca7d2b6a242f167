"""The one user job of scripts/chaos.py: it holds its slot for a while.

The built-in jobs finish in about a millisecond, too fast for a kill to find a slot RUNNING or
for eight submissions to prove that eight slots are held at once. Workers import this module by
name (``job_modules=["_chaos_jobs"]``, scripts/ on their PYTHONPATH), so it imports nothing
beyond the standard library.
"""

from __future__ import annotations

import time


def slow(reader, seconds: float, tag):
    time.sleep(seconds)
    return tag
