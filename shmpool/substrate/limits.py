"""The memory limit and its three thresholds, as the allocator applies them.

Usage counts whole reserved blocks, not requested bytes, because that is what the pools lose.
At 75% a warning is logged (once per upward crossing, not at every allocation); at 85% the
eviction hook runs after each allocation that leaves usage there; an allocation that would take
usage past 95% is refused with LimitExceeded. The limit itself (default 280 MiB) is therefore
never reached: the last 5% is head-room for the eviction hook to work in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from loguru import logger

__all__ = ["DEFAULT_LIMIT", "Thresholds", "PressureHook", "after_allocation"]

DEFAULT_LIMIT = 280 * 2**20

PressureHook = Callable[[int, int], None]
"""Called as ``hook(used_bytes, limit_bytes)`` after an allocation leaves usage above the eviction
threshold. Runs in the allocating process, outside the table lock; it may free memory."""


@dataclass(frozen=True)
class Thresholds:
    """Per-mille of the memory limit at which to warn, evict and refuse."""
    warn: int = 750
    evict: int = 850
    refuse: int = 950

    def __post_init__(self) -> None:
        if not 0 < self.warn <= self.evict <= self.refuse <= 1000:
            raise ValueError(
                f"thresholds must satisfy 0 < warn <= evict <= refuse <= 1000 (per mille), "
                f"got warn={self.warn} evict={self.evict} refuse={self.refuse}"
            )

    def refuse_at(self, limit: int) -> int:
        return limit * self.refuse // 1000


def after_allocation(before: int, after: int, limit: int, thresholds: Thresholds,
                     hook: PressureHook | None) -> None:
    """Log the warning crossing and run the eviction hook; call outside the table lock."""
    warn_at = limit * thresholds.warn // 1000
    if before <= warn_at < after:
        logger.warning(
            "shared memory usage {} of {} bytes ({:.1%}) passed the warning threshold ({:.0%})",
            after, limit, after / limit, thresholds.warn / 1000,
        )
    if hook is not None and after > limit * thresholds.evict // 1000:
        hook(after, limit)
