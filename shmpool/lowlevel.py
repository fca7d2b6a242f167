"""The pieces under the user API, for tools and tests that work on an instance's memory directly.

``SharedInstance`` is one process's mapping of an instance (control segment, pools, lock);
``AllocationTable`` is its cross-process bitmap allocator and ``Handle`` names one allocation;
``PoolSpec`` / ``DEFAULT_POOLS`` describe pools; ``Region`` reads and verifies a region file (or
buffer) zero-copy, the reading side of ``shmpool.RegionBuilder``. Everything here is stable enough to use but not
needed by a program that only publishes (``Coordinator``), reads (``attach``) or runs jobs
(``connect``); it may change between minor versions where the user API does not.
"""

from .data.region import Region
from .substrate.alloc import AllocationTable, Handle
from .substrate.instance import DEFAULT_POOLS, PoolSpec, SharedInstance

__all__ = ["AllocationTable", "DEFAULT_POOLS", "Handle", "PoolSpec", "Region", "SharedInstance"]
