"""Dimension and layer ids: Python ints, or numpy integers (converted); anything else is refused.

Ids are dictionary keys all the way down, and Python's ``True == 1`` and ``3.0 == 3`` hash alike,
so without a check ``load_layer_context(True, 17)`` silently returns dimension 1's layer. Callers
on a hot path test ``type(x) is int`` inline first (a few ns, the common case) and call
:func:`as_id` only when that fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidId

__all__ = ["as_id"]


def as_id(value: Any, argument: str, where: str = "") -> int:
    """``value`` as a plain int if it is an int (not a bool) or a numpy integer; else InvalidId."""
    if type(value) is int:
        return value
    # bool is an int subclass (refused); IntEnum members are others (accepted). np.bool_ is not
    # an np.integer.
    if (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, np.integer):
        return int(value)
    raise InvalidId(argument=argument, value=value, where=where)
