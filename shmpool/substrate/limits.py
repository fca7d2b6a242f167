"""The memory limit and its three thresholds: the one home of every rule about them.

Usage counts whole reserved blocks, not requested bytes, because that is what the pools lose.
At 75% a warning is logged (once per upward crossing, not at every allocation); at 85% the
eviction hook runs after each allocation that leaves usage there; an allocation that would take
usage past 95% is refused with LimitExceeded. The limit itself (default 280 MiB) is therefore
never reached: the last 5% is head-room for the eviction hook to work in.

The thresholds are per mille of the limit and live in the control segment (written once at
create), so every process applies the same numbers. :class:`Budget` is a reading of those words:
the allocator, the capacity manager, the coordinator's crystallize retry, ``Coordinator.stats``,
the metrics and ``shmpool stats`` all ask it, instead of each doing ``limit * permille // 1000``
(which is how eleven copies of that arithmetic and two copies of the state rule came about).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Callable

from ._log import logger

from ..errors import InvalidArgument

from .layout import W

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DEFAULT_LIMIT", "PER_MILLE", "Thresholds", "CapacityState", "Budget", "PressureHook",
           "per_mille", "after_allocation", "MAX_WORKERS", "check_worker_count"]

DEFAULT_LIMIT = 280 * 2**20
PER_MILLE = 1000

PressureHook = Callable[[int, int], None]
"""Called as ``hook(used_bytes, limit_bytes)`` after an allocation leaves usage above the eviction
threshold. Runs in the allocating process, outside the table lock; it may free memory."""


def per_mille(total: int, permille: int) -> int:
    """``permille`` thousandths of ``total``, rounded down (bytes or blocks: integers throughout)."""
    return int(total) * int(permille) // PER_MILLE


class CapacityState(IntEnum):
    """The highest threshold usage has reached; the value is what ``shmpool_capacity_state`` was."""
    OK = 0
    WARN = 1
    EVICT = 2
    REFUSE = 3

    @property
    def label(self) -> str:
        """``"ok"``, ``"warn"``, ``"evict"`` or ``"refuse"``: the word in stats and in metric labels."""
        return self.name.lower()


@dataclass(frozen=True)
class Thresholds:
    """Per-mille of the memory limit at which to warn, evict and refuse."""
    warn: int = 750
    evict: int = 850
    refuse: int = 950

    def __post_init__(self) -> None:
        if not 0 < self.warn <= self.evict <= self.refuse <= PER_MILLE:
            raise InvalidArgument(
                argument="thresholds", value=(self.warn, self.evict, self.refuse),
                reason=f"(warn, evict, refuse) must satisfy 0 < warn <= evict <= refuse <= {PER_MILLE} (per mille)")

    @classmethod
    def from_words(cls, words: np.ndarray) -> "Thresholds":
        """The thresholds an instance was created with, from its control words."""
        return cls(int(words[W.WARN_PERMILLE]), int(words[W.EVICT_PERMILLE]), int(words[W.REFUSE_PERMILLE]))

    def state(self, used: int, total: int) -> CapacityState:
        """The highest threshold ``used`` has reached out of ``total`` (a limit in bytes, or a
        pool's blocks: a nearly full pool fails allocations while the limit is far)."""
        if total <= 0:
            return CapacityState.OK
        for state, permille in ((CapacityState.REFUSE, self.refuse), (CapacityState.EVICT, self.evict),
                                (CapacityState.WARN, self.warn)):
            if used >= per_mille(total, permille):
                return state
        return CapacityState.OK

    def as_dict(self) -> dict[str, int]:
        return {"warn": self.warn, "evict": self.evict, "refuse": self.refuse}


# The five words a budget reads are adjacent in the control segment: one slice, one tolist().
_FIRST, _LAST = W.MEMORY_LIMIT, W.USED_BYTES
assert (W.WARN_PERMILLE, W.EVICT_PERMILLE, W.REFUSE_PERMILLE, W.USED_BYTES) == tuple(range(_FIRST + 1, _LAST + 1))


@functools.lru_cache(maxsize=8)
def _thresholds(warn: int, evict: int, refuse: int) -> Thresholds:
    # Written once at create and never changed: validate once per process, not per allocation.
    return Thresholds(warn, evict, refuse)


class Budget:
    """One reading of usage against the limit, taken from the control words.

    A snapshot: read it under the table lock where the decision must hold (the allocator does,
    at every allocation, so reading one costs about what the inline arithmetic did), anywhere
    else for reporting."""
    __slots__ = ("used", "limit", "thresholds")

    def __init__(self, used: int, limit: int, thresholds: Thresholds) -> None:
        self.used = used
        self.limit = limit
        self.thresholds = thresholds

    @classmethod
    def read(cls, words: np.ndarray) -> "Budget":
        limit, warn, evict, refuse, used = words[_FIRST:_LAST + 1].tolist()
        return cls(used, limit, _thresholds(warn, evict, refuse))

    def __repr__(self) -> str:
        return f"Budget(used={self.used}, limit={self.limit}, thresholds={self.thresholds})"

    @property
    def warn_at(self) -> int:
        return self.limit * self.thresholds.warn // PER_MILLE

    @property
    def evict_at(self) -> int:
        return self.limit * self.thresholds.evict // PER_MILLE

    @property
    def refuse_at(self) -> int:
        """Usage no allocation may take past: the refusal point of LimitExceeded."""
        return self.limit * self.thresholds.refuse // PER_MILLE

    def refuses(self, reserve: int) -> bool:
        """Would reserving ``reserve`` more bytes pass the refusal point? The refuse rule, once."""
        return self.used + reserve > self.limit * self.thresholds.refuse // PER_MILLE

    @property
    def over_evict(self) -> bool:
        """Usage is above the eviction threshold: the capacity manager should make room."""
        return self.used > self.evict_at

    @property
    def state(self) -> CapacityState:
        return self.thresholds.state(self.used, self.limit)


def after_allocation(before: int, after: int, limit: int, thresholds: Thresholds,
                     hook: PressureHook | None) -> None:
    """Log the warning crossing and run the eviction hook; call outside the table lock."""
    budget = Budget(after, limit, thresholds)
    if before <= budget.warn_at < after:
        logger.warning(
            "shared memory usage {} of {} bytes ({:.1%}) passed the warning threshold ({:.0%})",
            after, limit, after / limit, thresholds.warn / PER_MILLE,
        )
    if hook is not None and budget.over_evict:
        hook(after, limit)


# More workers than this is a typo, not a plan: each is a process with its own reader, and the
# job board has 256 slots by default. (--workers 100000 used to fork until the machine gave up.)
# The CLI (coordinator/cli_args.py) and the Coordinator constructor both ask check_worker_count.
MAX_WORKERS = 256


def check_worker_count(workers: object) -> int | None:
    """``workers`` as given if it is a whole number in 0..MAX_WORKERS, or None (the CPU count);
    InvalidArgument (a ShmPoolError and ValueError) otherwise, so ``Coordinator(workers=-1)`` is
    refused as ``shmpool serve --workers -1`` is."""
    from ..errors import InvalidArgument  # errors imports nothing of ours; kept local all the same

    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        raise InvalidArgument(argument="workers", value=workers,
                              reason=f"a whole number of worker processes in 0..{MAX_WORKERS}, or None "
                                     "for the CPU count")
    return workers
