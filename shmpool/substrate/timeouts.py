"""A caller's timeout, checked once where it enters the API: seconds as a real number, or None.

Every public wait of the read path (``attach``, ``Reader.wait_generation`` / ``await_generation``,
``Reader.snapshot``) and of the job path (submit, call, map, result, asubmit, acall, shutdown...)
asks :func:`check_timeout` first; the waits below see only None or a finite float >= 0. Before,
each place read a timeout its own way: ``threading.Condition.wait`` sleeps for ever on a NaN and
raises OverflowError past about 2**63 ns (``float("inf")`` included); ``asyncio.wait_for`` times
out at once on a NaN; ``time.monotonic() + timeout`` raises TypeError on a str; arithmetic that
clamped a NaN made it "no wait". The answer is the compiled core's (shmpool/_core/_sync.pyx
``deadline_ns``): NaN refused, <= 0 "look once, do not wait", more than MAX_TIMEOUT (~31 years,
infinity included) "no deadline".
"""

from __future__ import annotations

import math
import numbers

from ..errors import InvalidArgument, InvalidArgumentType

__all__ = ["MAX_TIMEOUT", "check_timeout"]

MAX_TIMEOUT = 1e9  # seconds: a deadline nobody lives to see is no deadline (as _sync.deadline_ns)


def check_timeout(value: object, argument: str = "timeout") -> float | None:
    """``value`` as seconds to wait: None for no deadline (None itself, or beyond MAX_TIMEOUT),
    else a float >= 0 (a negative timeout is 0: look once, do not wait).

    Any real number is accepted (numpy's too); InvalidArgument for NaN, InvalidArgumentType for
    anything else, bools included (``timeout=True`` is a slip, not one second).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentType(argument=argument, value=value,
                                  reason="must be a number of seconds, or None for no deadline")
    try:
        seconds = float(value)
    except OverflowError:  # an int past a float's range: no deadline either
        return None
    if math.isnan(seconds):
        raise InvalidArgument(argument=argument, value=value, reason="is NaN: a number of seconds, or None")
    return None if seconds > MAX_TIMEOUT else max(seconds, 0.0)
