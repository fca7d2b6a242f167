"""The Coordinator constructor's arguments, checked once where they enter.

Each check raises InvalidArgumentType (a TypeError) for a value of the wrong kind and
InvalidArgument (a ValueError) for one out of range, both ShmPoolErrors naming the argument.
Before, a bad value went on to fail somewhere below, later and untyped: ``max_dimensions=-3`` as
a ``struct.error`` at start, ``memory_limit="1G"`` as a TypeError from arithmetic,
``pools=[(4096, 10)]`` as an AttributeError, ``job_slots=0`` as an IndexError from the job
board, ``max_pin_age=nan`` as a ValueError converting to milliseconds; and some were taken
silently (``max_readers=0``: no process can ever attach; ``drain_timeout=-1``).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Sequence

from shmpool.errors import InvalidArgument, InvalidArgumentType
from shmpool.substrate.instance import PoolSpec
from shmpool.substrate.limits import Thresholds

__all__ = ["whole", "seconds", "pool_specs", "thresholds", "path_or_none", "verify_cache"]

U32_MAX = 2**32 - 1  # the control header stores max_dimensions and max_readers as u32


def whole(value: object, argument: str, *, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum]; bools and floats are refused (``1.5e9`` bytes
    is a slip, and ``True`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentType(argument=argument, value=value, reason="must be a whole number (int)")
    number = int(value)
    if number < minimum or (maximum is not None and number > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise InvalidArgument(argument=argument, value=value, reason=f"must be {bound}")
    return number


def seconds(value: object, argument: str, *, positive: bool = False, finite: bool = False) -> float:
    """``value`` as a float number of seconds >= 0 (> 0 if ``positive``; not infinite if
    ``finite``); NaN is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentType(argument=argument, value=value, reason="must be a number of seconds")
    number = float(value)
    if math.isnan(number) or number < 0 or (positive and number == 0) or (finite and math.isinf(number)):
        what = "a positive" if positive else "a non-negative"
        raise InvalidArgument(argument=argument, value=value,
                              reason=f"must be {what}{' finite' if finite else ''} number of seconds")
    return number


def pool_specs(value: Sequence[Any] | None) -> tuple[PoolSpec, ...] | None:
    """``pools`` as a tuple of PoolSpec, or None (the default pools)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidArgumentType(argument="pools", value=value, reason="must be a sequence of PoolSpec")
    for spec in value:
        if not isinstance(spec, PoolSpec):
            raise InvalidArgumentType(argument="pools", value=value,
                                      reason=f"{spec!r} is not a PoolSpec(block_size, block_count)")
    return tuple(value)


def thresholds(value: object) -> Thresholds:
    if not isinstance(value, Thresholds):
        raise InvalidArgumentType(argument="thresholds", value=value, reason="must be a Thresholds")
    return value


def path_or_none(value: object, argument: str) -> None:
    """Refuse what is neither None nor a path (str or os.PathLike)."""
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise InvalidArgumentType(argument=argument, value=value, reason="must be a path (str or os.PathLike)")


def verify_cache(value: object) -> None:
    """``verify_cache`` is True, False or a path."""
    if not isinstance(value, bool):
        path_or_none(value, "verify_cache")
        if value is None:
            raise InvalidArgumentType(argument="verify_cache", value=value,
                                      reason="must be True (the default file), False (none) or a path")
