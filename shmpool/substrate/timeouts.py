"""A caller's timeout, checked once where it enters the API: seconds as a real number, or None.

The waits below it take a float and nothing else: ``threading.Condition.wait`` sleeps for ever on
a NaN and raises OverflowError past about 2**63 ns; ``asyncio.wait_for`` times out at once on a
NaN; ``time.monotonic() + timeout`` raises TypeError on a str. So each public wait of the read
path (``attach``, ``Reader.wait_generation`` / ``await_generation``, ``Reader.snapshot``) asks
:func:`check_timeout` first, and gets the same answer the compiled core's waits give
(shmpool/_core/_sync.pyx ``deadline_ns``): NaN refused, <= 0 "do not wait", more than
MAX_TIMEOUT (~31 years, infinity included) "no deadline".
"""

from __future__ import annotations

import math
import numbers

from ..errors import InvalidArgument, InvalidArgumentType

__all__ = ["MAX_TIMEOUT", "check_timeout"]

MAX_TIMEOUT = 1e9  # seconds: a deadline nobody lives to see is no deadline (as _sync.deadline_ns)


def check_timeout(value: object, argument: str = "timeout") -> float | None:
    """``value`` as seconds, or None for no deadline (None itself, or beyond MAX_TIMEOUT).

    Any real number is accepted (numpy's too; <= 0 means "do not wait"); InvalidArgument for
    NaN, InvalidArgumentType for anything else, bools included (``timeout=True`` is a slip).
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
        raise InvalidArgument(argument=argument, value=value, reason="is NaN")
    return None if seconds > MAX_TIMEOUT else seconds
