"""Pins: the generations each reader holds, exactly, so that holding one pins only that one.

Each (reader row, directory entry) has four int64 words (``layout.PN``): two exact generations
and a range ``[RANGE_LO, RANGE_HI]`` for what does not fit in them. Generation ``g`` of an entry
is pinned by a row if ``g`` is in an exact word or inside its range. So a reader holding
generation 1 of a dimension, and the current one, pins those two and nothing in between (LMDB's
rule, one "oldest held" word, would hold back everything from 1 on). Only a reader holding more
than three distinct generations of one dimension at once uses the range for the oldest of them,
and only then are generations it does not hold (those inside its range) kept as well.

The words change without a lock while the coordinator reads them, and a multi-word update is
not atomic, so safety rests on two rules:

* **A held generation never moves.** It stays in the word it was first stored in until it is
  released; an exact word freed later is reused only by a *new* generation. Otherwise the
  coordinator could read the destination before the move and the source after it, and miss
  it. (Hence the range cannot be folded back into exact words.)
* **The range only ever covers what it must.** Adding lowers LO or raises HI; releasing raises
  LO or lowers HI to the bounds of what remains. Each single store therefore still covers
  every generation held across it. An empty range becomes ``[g, g]`` by storing HI before LO
  (LO != 0 is what makes a range exist); the new ``g`` needs no cover until the reader's
  re-check of GENERATION, and its stores precede that.

Generations become held here by a snapshot (pin, then re-check), or when the reader's cache
lets go of a generation that objects still hold (shmpool/data/mapping.py ``_move_to_pins``,
before the cache word is cleared), and are released when the last array over them dies, so
these words change only on those 0 <-> 1 transitions of the process's own reference counts,
never on the lookup path. The generation the reader keeps mapped for its lookups is in the
reader's cache word for the entry (``Control.caches``, layout 11: a line of its own with the
reader's cache words of 7 other entries; generation << 2 | USERS << 1 | BUSY), and pins only while one of those
bits is set (shmpool/_core/_lookup.pyx): that is what lets the coordinator reclaim from an idle
reader what only its cache holds.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import numpy as np
from ..substrate._log import logger

from .._core._sync import fence, membarrier
from ..errors import ReaderForked
from ..substrate.layout import (CACHE_LINE_WORDS, CACHE_SHIFT, EXACT_PINS, PIN_COLS, PN, R, RD, RT, W, D, CacheBit,
                                Control, cache_blocks)

if TYPE_CHECKING:
    from .readers import ForkClaim, ReaderRegistry

__all__ = ["DimensionPins", "RowPins", "PinState", "PinRecord", "pinned_rows", "list_pins"]


class DimensionPins:
    """One reader's pin words for one directory entry, and the generations behind them.

    Not thread-safe on its own: its :class:`RowPins` serialises every call."""

    __slots__ = ("_words", "_exact", "_range")

    def __init__(self, words: np.ndarray) -> None:
        self._words = words           # pins[row, entry]: int64[PIN_COLS]
        self._exact = [0] * EXACT_PINS
        self._range: set[int] = set()  # held generations that did not fit in an exact word

    @property
    def held(self) -> set[int]:
        return {g for g in self._exact if g} | self._range

    def rebind(self, words: np.ndarray) -> None:
        """Keep the same generations in other words (a forked child's row holding the same copy)."""
        self._words = words

    def __len__(self) -> int:
        return sum(1 for g in self._exact if g) + len(self._range)

    def hold(self, generation: int) -> bool:
        """Publish ``generation`` as held; False if it already was."""
        if generation in self._exact or generation in self._range:
            return False
        words, exact = self._words, self._exact
        for i, g in enumerate(exact):
            if not g:
                exact[i] = generation
                words[PN.EXACT0 + i] = generation
                return True
        was_empty = not self._range
        self._range.add(generation)
        lo, hi = min(self._range), max(self._range)
        if was_empty:
            words[PN.RANGE_HI] = hi  # HI first: the range exists once LO != 0
            words[PN.RANGE_LO] = lo
        else:
            words[PN.RANGE_LO] = lo  # widening: each store alone covers the old range
            words[PN.RANGE_HI] = hi
        return True

    def release(self, generation: int) -> None:
        """Withdraw ``generation`` (no longer held by anything in this process)."""
        words, exact = self._words, self._exact
        for i, g in enumerate(exact):
            if g == generation:
                exact[i] = 0
                words[PN.EXACT0 + i] = 0
                return
        if generation not in self._range:
            return
        self._range.discard(generation)
        if not self._range:
            words[PN.RANGE_LO] = 0
            words[PN.RANGE_HI] = 0
        else:
            words[PN.RANGE_LO] = min(self._range)  # narrowing: each store alone covers what remains
            words[PN.RANGE_HI] = max(self._range)


class RowPins:
    """A reader row and the pins in it, which outlive the Reader while anything is held.

    The row is released (``release_row(slot)``, which gives the slot back and unmaps) only once
    its reader is closed *and* no generation is held any more: a LoadedContext kept after
    ``Reader.close()`` keeps its generation pinned, so it never reads reused memory. Thread-safe.
    Across fork() the child's copy moves to a row of its own (shmpool/data/fork.py).
    """

    # Slots, no __dict__: one object per reader, ~200 B less of its private memory (issue 22).
    __slots__ = ("_control", "slot", "_release_row", "_registry", "_dims", "_counts", "_lock", "_reader_closed",
                 "_released", "lost", "__weakref__")

    def __init__(self, control: Control, slot: int, release_row: Callable[[int], None],
                 registry: "ReaderRegistry") -> None:
        # The pins section's numpy view, made at the first hold: a reader whose lookups go
        # through its cache words alone never holds one (docs/performance.md, issue 22).
        self._control = control
        self.slot = slot
        self._release_row = release_row
        self._registry = registry
        self._dims: dict[int, DimensionPins] = {}
        self._counts: dict[tuple[int, int], int] = {}  # (entry, generation): holders in this process
        self._lock = threading.RLock()
        self._reader_closed = False
        self._released = False
        self.lost: ReaderForked | None = None  # set in a forked child whose row could not be handed over

    def hold(self, entry: int, generation: int) -> bool:
        """Count one more holder of ``generation`` of ``entry``; True if this published the pin.

        Every hold needs one :meth:`release`: holders (mapped arrays, open snapshots) come and
        go independently, and the shared word is withdrawn only when the last of them goes."""
        with self._lock:
            key = (entry, generation)
            count = self._counts.get(key, 0)
            self._counts[key] = count + 1
            if count:
                return False
            dp = self._dims.get(entry)
            if dp is None:
                dp = self._dims[entry] = DimensionPins(self._control.pins[self.slot, entry])
            return dp.hold(generation)

    def release(self, entry: int, generation: int, *, from_collector: bool = True) -> None:
        """Withdraw a pin. From a finalizer (``from_collector``), a row release that follows is
        handed to a thread of its own: the collector may run inside a section of this thread
        that holds the (non-reentrant) table lock, which releasing the row takes."""
        with self._lock:
            if self._released:
                return
            key = (entry, generation)
            count = self._counts.pop(key, 0)
            if count > 1:
                self._counts[key] = count - 1
                return  # other holders remain: the shared word stays
            dp = self._dims.get(entry)
            if dp is not None:
                dp.release(generation)
            if not (self._reader_closed and self.held_count() == 0):
                return
            self._released = True
        if from_collector:
            if sys.is_finalizing():
                return  # a thread started now would run into a dismantled interpreter (SIGSEGV seen);
                # the process is exiting, and the coordinator drops a dead process's row
            threading.Thread(target=self._release_row, args=(self.slot,), name="shmpool-row-release",
                             daemon=True).start()
        else:
            self._release_row(self.slot)

    def hold_all(self, pairs: list[tuple[int, int]]) -> None:
        """:meth:`hold` each (entry, generation), under one acquisition of the lock."""
        with self._lock:
            for entry, generation in pairs:
                self.hold(entry, generation)

    def release_all(self, pairs: list[tuple[int, int]], *, from_collector: bool = False) -> None:
        """:meth:`release` each (entry, generation). Not under one acquisition: the last release
        may release the row, which must not happen with this lock held (see :meth:`release`)."""
        for entry, generation in pairs:
            self.release(entry, generation, from_collector=from_collector)

    def held_count(self) -> int:
        with self._lock:
            return sum(len(dp) for dp in self._dims.values())

    def held(self) -> dict[int, set[int]]:
        with self._lock:
            return {e: dp.held for e, dp in self._dims.items() if len(dp)}

    def reader_closed(self) -> None:
        """The Reader is closed or collected: release the row now, or when the last pin goes."""
        with self._lock:
            self._reader_closed = True
            if self._released or self.held_count():
                return
            self._released = True
        self._release_row(self.slot)

    @property
    def released(self) -> bool:
        return self._released

    @property
    def instance(self) -> str:
        return self._registry.instance

    # ----------------------------------------------------------------- fork (shmpool/data/fork.py)

    def fork_prepare(self, timeout: float | None) -> "ForkClaim | None":
        """In the forking thread, before fork(): claim a row for the child and copy this row's
        pin words into it. Returns holding this object's lock (nothing held changes until the
        fork is done), or None when nothing is held any more (the row was released)."""
        if self._released:
            return None
        claim = self._registry.claim_for_fork(self.slot, timeout)
        self._lock.acquire()
        if self._released:  # the last hold went while we claimed
            self._lock.release()
            self._registry.unregister(claim.slot)
            return None
        # The parent's row pins all of it throughout, so the order of these stores is free.
        used = entries_used(self._control)
        pins = self._control.pins
        pins[claim.slot, :used] = pins[self.slot, :used]
        caches, blocks = self._control.caches, cache_blocks(used)
        caches[claim.slot, :blocks] = caches[self.slot, :blocks]
        # The cache words with USERS forced on: objects made from a cached generation between
        # this copy and fork() are the child's too. The child moves what it holds into its pin
        # words and clears them (MappedGenerations._fork_child).
        cache = caches[claim.slot, :blocks]
        cache[cache != 0] |= int(CacheBit.USERS)
        return claim

    def fork_parent(self) -> None:
        """In the parent after fork(): the claimed row is the child's business now."""
        self._lock.release()

    def fork_child(self, claim: "ForkClaim", timeout: float | None) -> bool:
        """In the child: take the claimed row over and move every pin to it (same words, same
        generations). False if the row is gone; raises LockTimeout. Unless this returned True,
        the caller must :meth:`orphan` the object."""
        self._lock = threading.RLock()  # the parent's was held across fork() by this very thread
        if not self._registry.take_over(claim, timeout):
            return False
        self.slot = claim.slot
        for entry, dp in self._dims.items():
            dp.rebind(self._control.pins[claim.slot, entry])
        return True

    def orphan(self, error: ReaderForked) -> None:
        """In a forked child without a row of its own: never write the parent's pins, never
        release its row. What this process holds is no longer protected (``error`` says why)."""
        self._lock = threading.RLock()
        for dp in self._dims.values():
            dp.rebind(np.zeros(PIN_COLS, np.int64))  # private scratch
        self._released = True
        self.lost = error


def entries_used(control: Control) -> int:
    """Directory entries ever claimed (W.ENTRIES_HIGH): every reader's pin and cache words beyond
    are zero. Whatever reads or writes a whole row stops there: the pin words are entry-major, so
    a row spans a page per entry, and a page a process touches, even to read it, is mapped into
    it (its PSS) for good."""
    return int(control.words_mv[W.ENTRIES_HIGH])


def cache_of(control: Control, slot: int, entry: int) -> int:
    """Reader ``slot``'s cache word for ``entry``."""
    return int(control.caches[slot, entry // CACHE_LINE_WORDS, entry % CACHE_LINE_WORDS])


def row_in_use(control: Control, slot: int, used: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reader ``slot``'s pin words and cache words (a copy) for entries ``0 .. used-1``, and the
    entries where any of them is set."""
    pins = control.pins[slot, :used]
    caches: np.ndarray = control.caches[slot, :cache_blocks(used)].reshape(-1)[:used].copy()
    return pins, caches, np.flatnonzero(pins.any(axis=1) | (caches != 0))


# --------------------------------------------------------------------- coordinator side

_CACHE_PINS = int(CacheBit.BUSY | CacheBit.USERS)


@functools.lru_cache(maxsize=1)
def _barrier_refused() -> None:
    logger.warning("membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) refused: generations idle readers "
                   "keep cached stay pinned until their next lookup")


def pinned_rows(control: Control, entry: int, generation: int) -> np.ndarray:
    """Row indices of live readers that pin ``generation`` of ``entry``.

    The coordinator's half of the cache-word protocol (shmpool/_core/_lookup.pyx): a memory
    barrier in every reader (membarrier) after its GENERATION store (made GRACE ago) and before
    the cache-word loads, so that a lookup either shows BUSY here or sees the new generation;
    the cache words are read before the pin words, because a reader stores a generation its
    objects still hold in the pin words before it clears the cache word. If the kernel refuses
    the barrier, a reader's cached generation counts as pinned whatever its bits say."""
    barrier = membarrier()
    if not barrier:
        _barrier_refused()
    cache = control.caches[:, entry // CACHE_LINE_WORDS, entry % CACHE_LINE_WORDS].copy()
    fence()  # loads after loads: x86-64 keeps them in order, aarch64 needs the barrier
    p = control.pins[:, entry, :]
    g = generation
    hit = (p[:, PN.EXACT0] == g) | (p[:, PN.EXACT1] == g)
    lo = p[:, PN.RANGE_LO]
    hit |= (lo != 0) & (lo <= g) & (g <= p[:, PN.RANGE_HI])
    hit |= ((cache >> CACHE_SHIFT) == g) & (((cache & _CACHE_PINS) != 0) | (not barrier))
    hit &= control.readers[:, RD.PID] != 0
    return np.flatnonzero(hit)


def busy_only(control: Control, slot: int, entry: int, generation: int) -> bool:
    """True if row ``slot`` pins ``generation`` of ``entry`` only by a lookup in progress (BUSY):
    no object of its process holds it; the process is stopped, or descheduled, inside a lookup."""
    words = [int(w) for w in control.pins[slot, entry]]
    lo, hi, cache = words[PN.RANGE_LO], words[PN.RANGE_HI], cache_of(control, slot, entry)
    held = generation in words[PN.EXACT0:PN.EXACT0 + EXACT_PINS] or (lo != 0 and lo <= generation <= hi)
    return not held and cache >> CACHE_SHIFT == generation and cache & _CACHE_PINS == CacheBit.BUSY


class PinState(str, Enum):
    """What a pin means for reclamation (a label for listings, not a shared word)."""
    CURRENT = "current"    # the published generation: retains nothing that would be freed
    HELD = "held"          # superseded; an object of its reader (context, view, batch, snapshot) holds it
    WAITING = "waiting"    # superseded; held only by a lookup in progress (its cache word's BUSY)
    STALE = "stale"        # superseded longer than max_pin_age: listed and warned about, not freed


class PinRecord(NamedTuple):
    """One generation one reader pins, as any attached process can see it."""
    slot: int
    pid: int
    dimension_id: int
    generation: int
    state: PinState
    age_s: float | None       # since the generation was superseded; None for the current one
    bytes_retained: int       # whole blocks of its region (0 for the current generation)
    answered: bool            # held by an object of the reader, not only by a lookup in progress
    by_range: bool            # pinned by the overflow range rather than an exact word

    def as_dict(self) -> dict[str, Any]:
        d = self._asdict()
        d["state"] = self.state.value
        return d


def superseded_regions(control: Control, block_sizes: Sequence[int]) -> dict[tuple[int, int], tuple[int, int, int]]:
    """{(dimension id, generation): (bytes, superseded_ns, superseded_epoch)} of superseded
    generations whose region is still allocated, from the record tags."""
    rec, tags = control.records, control.tags
    live = (rec[:, R.STATE] == 1) & (tags[:, RT.SERIAL] == rec[:, R.SERIAL]) & (tags[:, RT.SUPERSEDED_NS] != 0)
    out: dict[tuple[int, int], tuple[int, int, int]] = {}
    for r in np.flatnonzero(live):
        nbytes = int(rec[r, R.BLOCK_COUNT]) * block_sizes[int(rec[r, R.POOL])]
        # A generation has its layer index and, unless it only kept earlier layers, a data
        # allocation: both carry its tag, and both go when it does.
        key = (int(tags[r, RT.DIMENSION_ID]), int(tags[r, RT.GENERATION]))
        prev = out.get(key, (0,))[0]
        out[key] = (prev + nbytes, int(tags[r, RT.SUPERSEDED_NS]), int(tags[r, RT.SUPERSEDED_EPOCH]))
    return out


def list_pins(control: Control, block_sizes: Sequence[int], now_ns: int | None = None) -> list[PinRecord]:
    """Every pin of every attached reader, with its age and the bytes it keeps from being freed.

    Reads shared memory only, so ``shmpool stats`` in another process sees what the coordinator
    sees. Bytes of a region pinned by two readers are listed under both."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    max_age = int(control.words[W.MAX_PIN_AGE_MS]) / 1e3
    directory = control.directory
    superseded = superseded_regions(control, block_sizes)
    rows = control.readers
    out: list[PinRecord] = []
    used = entries_used(control)
    for slot in np.flatnonzero(rows[:, RD.PID]):
        pid = int(rows[slot, RD.PID])
        pins, caches, entries = row_in_use(control, int(slot), used)
        for entry in entries:
            dim, published = int(directory[entry, D.DIMENSION_ID]), int(directory[entry, D.GENERATION])
            words = [int(w) for w in pins[entry]]
            lo, hi, cache = words[PN.RANGE_LO], words[PN.RANGE_HI], int(caches[entry])
            exact = {g for g in words[PN.EXACT0:PN.EXACT0 + EXACT_PINS] if g}
            busy = set()
            if cache & _CACHE_PINS:  # the cached generation pins only while BUSY or USERS is set
                if cache & CacheBit.USERS:
                    exact.add(cache >> CACHE_SHIFT)
                else:
                    busy.add(cache >> CACHE_SHIFT)
            ranged = set()
            if lo:
                ranged = {g for (d, g) in superseded if d == dim and lo <= g <= hi}
                if lo <= published <= hi:
                    ranged.add(published)
            for g in sorted(exact | ranged | busy):
                info = superseded.get((dim, g))
                if g == published:
                    state, age, nbytes, answered = PinState.CURRENT, None, 0, True
                elif info is None:
                    continue  # already freed (a pin being withdrawn after a failed re-check)
                else:
                    nbytes, at_ns, _epoch = info
                    age = max(0.0, (now_ns - at_ns) / 1e9)
                    answered = g in exact or g in ranged
                    state = (PinState.STALE if max_age and age > max_age
                             else PinState.HELD if answered else PinState.WAITING)
                out.append(PinRecord(int(slot), pid, dim, g, state, age, nbytes, answered,
                                     g not in exact))
    return out
