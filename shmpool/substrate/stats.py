"""Plain snapshots of allocator statistics, readable from any attached process."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PoolStats", "TableStats"]


@dataclass(frozen=True)
class PoolStats:
    index: int
    block_size: int
    blocks_total: int
    blocks_used: int
    peak_blocks_used: int
    largest_free_run: int
    allocations: int
    failures: int

    @property
    def utilization(self) -> float:
        return self.blocks_used / self.blocks_total if self.blocks_total else 0.0

    @property
    def fragmentation(self) -> float:
        """1 - largest free run / total free blocks (0 = all free space in one run)."""
        free = self.blocks_total - self.blocks_used
        return 1.0 - self.largest_free_run / free if free else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["utilization"] = self.utilization
        d["fragmentation"] = self.fragmentation
        return d


@dataclass(frozen=True)
class TableStats:
    memory_limit: int
    used_bytes: int
    peak_bytes: int
    allocations: int
    frees: int
    failures: int
    limit_refusals: int
    reclaimed: int
    live_allocations: int
    lock_recoveries: int
    pool_growths: int
    backed_bytes: int        # pool bytes whose pages are reserved in /dev/shm (never shrinks)
    shm_full_refusals: int   # failures because /dev/shm was full (subset of failures)
    pools: tuple[PoolStats, ...]  # pools whose segment exists (configured, plus growth ones)

    @property
    def utilization(self) -> float:
        return self.used_bytes / self.memory_limit if self.memory_limit else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["utilization"] = self.utilization
        d["pools"] = [p.as_dict() for p in self.pools]
        return d
