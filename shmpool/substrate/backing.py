"""Which pool blocks have their pages reserved in /dev/shm: the backed bitmaps.

A pool segment is sparse: its pages are allocated on first touch, and on a full /dev/shm that
touch kills the toucher with SIGBUS. So the allocation table reserves an allocation's pages
before it hands the handle out (``Segment.reserve_pages``: ``posix_fallocate``), and that
reservation is where a full filesystem becomes a typed error.

Reserving is idempotent but not cheap even when the pages exist (tmpfs walks every page: about
1 ms per 4 MiB, measured), while a tmpfs page once allocated stays until the segment is removed.
So one bit per block, shared by every process in the control segment, remembers which blocks are
backed: only blocks never backed pay, once per instance, whichever process allocates them.

Invariant: a bit is set only after its block's pages were reserved, and bits are never cleared
(a lock takeover rebuilds the allocation bitmaps, not these). A bit that is clear although the
pages exist (the reserving process died before marking) only costs one more reservation.
"""

from __future__ import annotations

import numpy as np

from .layout import W, Control

__all__ = ["Backing"]


def _bits(bm: np.ndarray, first: int, count: int) -> tuple[int, int, np.ndarray]:
    lo, hi = first >> 3, (first + count + 7) >> 3
    return lo, hi, np.unpackbits(bm[lo:hi], bitorder="little")


class Backing:
    """The backed bitmaps of a mapped control segment (read and written under the table lock)."""

    def __init__(self, control: Control) -> None:
        self._ctl = control

    def covers(self, p: int, first: int, count: int) -> bool:
        """Whether every block of the run is backed (on every allocation: kept to one bit test or
        one integer mask)."""
        bm = self._ctl.backed[p]
        if count == 1:
            return bool(int(bm[first >> 3]) >> (first & 7) & 1)
        # One Python int over the run's bytes: ~0.5 µs, against ~4 µs for numpy's unpackbits.
        lo, hi = first >> 3, (first + count + 7) >> 3
        mask = ((1 << count) - 1) << (first - lo * 8)
        return int.from_bytes(bm[lo:hi].tobytes(), "little") & mask == mask

    def mark(self, p: int, first: int, count: int, block_size: int) -> None:
        """Record that the run's pages are reserved (after reserving them)."""
        bm = self._ctl.backed[p]
        lo, hi, bits = _bits(bm, first, count)
        run = bits[first - lo * 8:first - lo * 8 + count]
        newly = count - int(run.sum())
        run[:] = 1
        bm[lo:hi] = np.packbits(bits, bitorder="little")
        self._ctl.words[W.BACKED_BYTES] += newly * block_size

    def usable(self, p: int, in_use: np.ndarray) -> np.ndarray:
        """A bitmap like ``in_use`` in which unbacked blocks also read as used: where to look for
        room when the filesystem cannot back any more."""
        usable: np.ndarray = in_use | ~self._ctl.backed[p]
        return usable
