"""The one check of a caller's ``timeout`` (seconds to wait), for every public call of the job path.

Before it, each call passed its timeout on as it came, and each place it reached read it its own
way: NaN was refused by the compiled core (InvalidArgument) on submit and call, but became
"no wait" once arithmetic had clamped it (a submit with a spilled array, map's iterator) and
"wait for ever" elsewhere (acall, a result() with the owner's help); ``float("inf")`` was "no
limit" in the core but OverflowError in a Future's Condition (result(), map's iterator); a str
was a bare TypeError from whatever added it to a clock. Now every public call checks it here,
once, up front, and the places below see only None or a finite float >= 0.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ..errors import InvalidArgument, InvalidArgumentType

__all__ = ["check_timeout", "NO_LIMIT"]

# Past this many seconds a timeout is no limit (None), as the core's deadline_ns reads it
# (~31 years): threading's waits overflow on float("inf"), and nobody waits that long.
NO_LIMIT = 1e9


def check_timeout(value: Any, argument: str = "timeout") -> float | None:
    """``value`` as seconds to wait: None (no limit, also for anything above NO_LIMIT, inf
    included) or a float >= 0 (a negative timeout is 0: look once, do not wait).

    InvalidArgument for NaN, InvalidArgumentType for anything that is not a real number (a bool
    included: ``timeout=True`` is a mistake, not one second)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentType(argument=argument, value=value, reason="seconds (a number) or None")
    seconds = float(value)
    if math.isnan(seconds):
        raise InvalidArgument(argument=argument, value=value, reason="is NaN: seconds (a number) or None")
    if seconds > NO_LIMIT:
        return None
    return max(seconds, 0.0)
