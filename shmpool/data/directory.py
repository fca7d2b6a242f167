"""The dimension directory: which region holds each dimension, published by generation.

Single writer (the coordinator), many lock-free readers, a seqlock with two slots:

    writer:  fill the slot NOT holding the current generation g with the new region's location
             (generation n > g); then store GENERATION = n.
    reader:  g = GENERATION; read slot[g & 1], else the other slot; accept the one whose
             slot.GENERATION == g if GENERATION is still g afterwards; otherwise read again.

The store of GENERATION is the commit point of a crystallization: one aligned int64 store, so a
reader sees either the old generation or the new one, never a mix. The slot a reader is reading
is only rewritten after GENERATION has moved past the one it read, and the re-check catches that.

Generations usually advance by one, so the slot of g is slot[g & 1] and the reader's first guess
is right. A cluster publishes the same content under the same generation on every host
(shmpool/dask.py), so a host may jump (g -> g + 5); the slot then stops matching parity and the
reader finds it on its second look. Generations only ever increase, so a slot that shows the
generation a reader read, while GENERATION still shows it too, was not rewritten in between.

Across dimensions, W.PUBLISH_SEQ is a seqlock over every publication: the writer makes it odd
before its first GENERATION store and even after its last (:meth:`Directory.commit`; one
publish is a commit of one, several are one commit). A reader that reads the same even value
before and after reading any number of GENERATION words has seen them all at one instant.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..errors import DirectoryFull, GenerationNotNewer, RegionFormatError
from ..substrate.layout import D, DIR_COLS, S, SLOT_COLS, W, Control

__all__ = ["Location", "Directory", "EVICTED"]

EVICTED = 0  # S.NBYTES of a generation that has no region: evicted, reloaded on request


@dataclass(frozen=True)
class Location:
    """Where generation ``generation`` of a dimension lives."""
    generation: int
    pool: int
    first_block: int
    nbytes: int
    record: int
    serial: int

    @property
    def evicted(self) -> bool:
        return self.nbytes == EVICTED

    @classmethod
    def evicted_at(cls, generation: int) -> "Location":
        return cls(generation, -1, 0, EVICTED, -1, 0)


def _sequenced(publish: Callable[[Directory, int, Location], None]) -> Callable[[Directory, int, Location], None]:
    """Make a lone publish a commit of its own (inside :meth:`Directory.commit` it joins that one)."""
    @functools.wraps(publish)
    def bracketed(self: "Directory", entry: int, loc: Location) -> None:
        with self.commit():
            publish(self, entry, loc)
    return bracketed


# Passes that find the same GENERATION in neither slot: the entry is corrupt. One would do on a
# machine that orders stores (x86-64); a weakly ordered one may show the word before the slot's
# stores for some nanoseconds, and 100 passes are ~100 us, past any such delay.
_STALE_MISSES = 100


class Directory:
    """Reader and writer views of the directory section of a control segment."""

    # Slots, no __dict__: one object per reader, ~200 B less of its private memory each
    # (docs/performance.md, issue 22).
    __slots__ = ("_ctl", "_mv", "_words", "capacity", "_depth")

    def __init__(self, control: Control) -> None:
        self._ctl = control
        self._mv = control.directory_mv
        self._words = control.words_mv
        self.capacity = control.layout.max_dimensions
        self._depth = 0  # nesting of commit(); single writer (the Publisher's lock)

    # ----------------------------------------------------------------- reader side (lock-free)

    def entries(self) -> dict[int, int]:
        """{dimension id: entry index} of every entry in use.

        Read through the directory's memoryview, not a numpy view of the section: a reader
        process makes none (each was ~0.5 kB of its private memory, docs/performance.md issue 22).
        Up to W.ENTRIES_HIGH: the entries beyond were never claimed, and reading them would map
        their pages into every reader (8 pages for 256 entries; most hold nothing)."""
        ids = self._mv[D.DIMENSION_ID:self._words[W.ENTRIES_HIGH] * DIR_COLS:DIR_COLS].tolist()
        return {d: e for e, d in enumerate(ids) if d}

    def find(self, dimension_id: int) -> int | None:
        """The entry claimed for ``dimension_id`` (published or not), or None; read as
        :meth:`entries` reads, without building the dict."""
        mv, high = self._mv, min(self._words[W.ENTRIES_HIGH], self.capacity)  # a corrupt word: no IndexError
        for entry in range(high):
            if mv[entry * DIR_COLS + D.DIMENSION_ID] == dimension_id:
                return entry
        return None

    def version(self) -> int:
        """W.DIR_VERSION: moves whenever an entry is claimed or released (snapshots cache entries by it)."""
        return self._words[W.DIR_VERSION]

    @staticmethod
    def generation_position(entry: int) -> int:
        """Index of the entry's GENERATION word in ``Control.directory_mv``."""
        return entry * DIR_COLS + D.GENERATION

    @staticmethod
    def touched_position(entry: int) -> int:
        """Index of the entry's TOUCHED word in ``Control.directory_mv``."""
        return entry * DIR_COLS + D.TOUCHED

    def generation(self, entry: int) -> int:
        return self._mv[entry * DIR_COLS + D.GENERATION]

    def sequence(self) -> int:
        """W.PUBLISH_SEQ: odd while a commit is storing GENERATION words."""
        return self._words[W.PUBLISH_SEQ]

    def read(self, entry: int) -> Location | None:
        """A consistent snapshot of the published location, or None if never published."""
        fields = self.read_fields(entry)
        return None if fields is None else Location(*fields)

    def read_fields(self, entry: int) -> tuple[int, int, int, int, int, int] | None:
        """:meth:`read` as a plain tuple in Location's field order (a frozen dataclass costs
        ~2 µs to build; a snapshot reads every entry)."""
        mv = self._mv
        base = entry * DIR_COLS
        last, misses = 0, 0
        while True:
            gen = mv[base + D.GENERATION]
            if gen == 0:
                return None
            slot = base + D.SLOT0 + (gen & 1) * SLOT_COLS
            if mv[slot + S.GENERATION] != gen:  # after a jump the parity guess misses
                slot = base + D.SLOT0 + (1 - (gen & 1)) * SLOT_COLS
            fields = (mv[slot + S.GENERATION], mv[slot + S.POOL], mv[slot + S.FIRST_BLOCK],
                      mv[slot + S.NBYTES], mv[slot + S.RECORD], mv[slot + S.SERIAL])
            if fields[0] == gen and mv[base + D.GENERATION] == gen:
                return fields
            # A publish in progress moves GENERATION (it only grows) before a pass can miss
            # again: the slot of the published generation is never written while it is
            # published. The same word missed pass after pass is a corrupt or foreign
            # segment, which would otherwise keep this loop (and its caller's lock) for ever.
            misses = misses + 1 if gen == last else 1
            last = gen
            if misses >= _STALE_MISSES:
                raise RegionFormatError(source=f"directory entry {entry}",
                                        fault=f"GENERATION is {gen}, but neither of its slots holds that generation "
                                              f"(they hold {mv[base + D.SLOT0 + S.GENERATION]} and "
                                              f"{mv[base + D.SLOT0 + SLOT_COLS + S.GENERATION]})")

    # ----------------------------------------------------------------- writer side (coordinator)

    def add(self, dimension_id: int) -> int:
        """Claim an entry for a new dimension id (unpublished until :meth:`publish`)."""
        ids = self._ctl.directory[:, D.DIMENSION_ID]
        free = np.flatnonzero(ids == 0)
        if not len(free):
            raise DirectoryFull(dimension_id=dimension_id, capacity=self.capacity)
        entry = int(free[0])
        row = self._ctl.directory[entry]
        row[:] = 0
        row[D.DIMENSION_ID] = dimension_id
        words = self._ctl.words
        # Before any reader can find the entry: whoever clears or copies a reader's pins reads
        # only entries below it, and must not miss this one (layout 11: shm-layout.md).
        words[W.ENTRIES_HIGH] = max(int(words[W.ENTRIES_HIGH]), entry + 1)
        words[W.DIR_VERSION] += 1
        return entry

    @contextmanager
    def commit(self) -> Iterator[None]:
        """Bracket GENERATION stores as one instant for readers of W.PUBLISH_SEQ (re-entrant).

        Keep the body to directory stores: a reader that finds the word odd waits for it (up to
        its timeout), so everything slow (allocation, copying, logging) belongs before or after."""
        words = self._words
        outer = self._depth == 0
        if outer:
            words[W.PUBLISH_SEQ] = words[W.PUBLISH_SEQ] + 1  # odd: GENERATION words are changing
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if outer:
                words[W.PUBLISH_SEQ] = words[W.PUBLISH_SEQ] + 1  # even: one new instant

    @_sequenced
    def publish(self, entry: int, loc: Location) -> None:
        """Make ``loc`` the current generation of ``entry``: slot first, GENERATION last.

        ``loc.generation`` must exceed the current one (by one, or more for a jump); raises
        GenerationNotNewer otherwise, with nothing written.
        """
        mv = self._mv
        base = entry * DIR_COLS
        current = mv[base + D.GENERATION]
        if loc.generation <= current:
            raise GenerationNotNewer(dimension_id=int(self._ctl.directory[entry, D.DIMENSION_ID]),
                                     generation=loc.generation, current=current)
        # Never the slot a reader may be reading: the one holding the current generation.
        held = 0 if mv[base + D.SLOT0 + S.GENERATION] == current else 1
        slot = base + D.SLOT0 + ((1 - held) if current else (loc.generation & 1)) * SLOT_COLS
        mv[slot + S.POOL] = loc.pool
        mv[slot + S.FIRST_BLOCK] = loc.first_block
        mv[slot + S.NBYTES] = loc.nbytes
        mv[slot + S.RECORD] = loc.record
        mv[slot + S.SERIAL] = loc.serial
        mv[slot + S.GENERATION] = loc.generation
        mv[base + D.GENERATION] = loc.generation  # commit point
