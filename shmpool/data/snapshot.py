"""Snapshots: every published dimension as it was at one instant, however many publishes follow.

``with reader.snapshot() as snap:`` reads the directory's GENERATION words inside one even value
of the publish seqlock W.PUBLISH_SEQ (shmpool/data/directory.py), so it sees every dimension at one
instant, across multi-dimension commits too; then it pins each of those generations and checks
the word did not move (pin, then re-check: the same rule as ``Reader._refresh``, covered by the
reclaimer's GRACE). The pins are counted holds of the reader's row (shmpool/data/pins.py), released
when the snapshot closes, is collected, or its reader's row goes.

The directory keeps two slots per dimension, so an old generation's location is overwritten by
the next publish after the one that superseded it (the very next one, when generations jump):
the snapshot reads each :class:`~shmpool.data.directory.Location` at its instant and keeps it. A
generation is mapped on the first lookup in its dimension (views of its shared layer index and
of the pools its layers live in, shmpool/data/layer_index.py), or shared with the reader when it
is the generation the reader has cached. Contexts a snapshot returns hold their own generation, like
any context: they stay valid after the snapshot closes.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Iterator

from ..substrate._log import logger

from ..substrate._proc import is_alive
from .._core._lookup import Generation, SnapshotCore
from .context import LoadedContext, check_keyword
from .directory import EVICTED, Directory, Location
from ..errors import DimensionEvicted, DimensionNotFound, ShmPoolError, SnapshotClosed, SnapshotTimeout
from ..substrate.ids import as_id
from ..substrate.layout import TOUCHED_READ, W

if TYPE_CHECKING:
    from .mapping import MappedGenerations
    from .pins import RowPins

__all__ = ["Snapshot", "SNAPSHOT_TIMEOUT"]

_Fields = tuple[int, int, int, int, int, int]  # a Location's fields, as Directory.read_fields gives them

SNAPSHOT_TIMEOUT = 5.0  # seconds snapshot() waits for a multi-dimension commit to finish
_ODD_POLL = 0.0002      # a commit is a handful of directory stores: microseconds
_LIVENESS_AFTER = 0.01  # an odd word this old makes us ask whether its coordinator still lives

def _release(pins: "RowPins", holds: list[tuple[int, int]]) -> None:
    try:
        pins.release_all(holds, from_collector=True)
    except ShmPoolError as exc:  # the row went with its instance already
        logger.debug("snapshot pins {} not released: {}", holds, exc)


class Snapshot(SnapshotCore):
    """One instant of every published dimension of an instance, for consistent reads.

    Made by :meth:`Reader.snapshot`. Lookups (``load_layer_context``, ``load_contexts``,
    ``scan``, ``generation``) see each dimension at the generation it had at that instant,
    whatever has been published since; none of them blocks or touches the directory. Dimensions
    published after the instant are not in it (DimensionNotFound). A dimension evicted at the
    instant raises DimensionEvicted. Its generations stay pinned, and so cannot be reclaimed,
    until :meth:`close` (idempotent; also at ``__exit__`` and when collected): keep snapshots
    short-lived. Contexts it returned stay valid after it closes. Thread-safe.
    """

    __slots__ = ("_mapped", "sequence", "_locations", "_dir_mv", "_finalizer", "__weakref__")  # _gens: the core's

    def __init__(self, mapped: "MappedGenerations", sequence: int, locations: dict[int, tuple[int, _Fields]],
                 holds: list[tuple[int, int]]) -> None:
        self._mapped = mapped      # its reader's generations: the row its holds are in, the mapping
        self.sequence = sequence   # the even W.PUBLISH_SEQ of its instant
        self._locations = locations  # {dimension id: (entry, Location fields)}
        self._gens: dict[int, Generation] = {}
        self._dir_mv = mapped.dir_mv
        self._finalizer = weakref.finalize(self, _release, mapped.pins, holds)
        self._finalizer.atexit = False  # a dead process's pins are dropped by the coordinator
        mapped.track_snapshot(self)

    @classmethod
    def take(cls, mapped: "MappedGenerations", timeout: float | None) -> "Snapshot":
        """Read, pin and re-check every published generation within one even PUBLISH_SEQ."""
        pins, words = mapped.pins, mapped.words_mv
        read = mapped.directory.read_fields
        start = time.monotonic()
        odd_since = None
        while True:
            # Under the mapping's lock, open: close() cannot unmap the words and the directory
            # between the open check and the reads (a raw ValueError of a released view, seen).
            with mapped.open_section():
                seq = words[W.PUBLISH_SEQ]
                if not seq & 1:
                    odd_since = None
                    # Entries are claimed (W.DIR_VERSION) before their first publish bumps the
                    # sequence, so the entries read after ``seq`` include every one published by then.
                    found = [(dim, entry, read(entry)) for dim, entry in mapped.entries().items()]
                    locations = {dim: (entry, fields) for dim, entry, fields in found if fields is not None}
                    holds = [(entry, f[0]) for entry, f in locations.values() if f[3] != EVICTED]
                    pins.hold_all(holds)
                    if words[W.PUBLISH_SEQ] == seq:
                        return cls(mapped, seq, locations, holds)
                    pins.release_all(holds)  # a publish landed meanwhile: that was no instant
                now = time.monotonic()
                alive = True
                if seq & 1:
                    odd_since = odd_since or now
                if odd_since is not None and now - odd_since > _LIVENESS_AFTER:
                    alive = is_alive(int(words[W.COORDINATOR_PID]), int(words[W.COORDINATOR_START]))
            if not alive or (timeout is not None and now - start >= timeout):
                raise SnapshotTimeout(name=mapped.name, sequence=int(seq), waited=now - start,
                                      coordinator_alive=alive)
            if seq & 1:
                time.sleep(_ODD_POLL)

    # ----------------------------------------------------------------- lookups

    # load_layer_context and load_contexts are SnapshotCore's (shmpool/_core/_lookup.pyx): one
    # dict lookup for the generation, the probe and the context in C; _resolve (first use of a
    # dimension) is called back here.

    def scan(self, dimension_id: int | str, keyword: str | None = None) -> Iterator[LoadedContext]:
        """Every layer of the dimension at the instant (layer id order), or those tagged ``keyword``."""
        dimension_id = self._dimension(dimension_id)
        keyword = check_keyword(keyword)
        gen = self._gens.get(dimension_id) or self._resolve(dimension_id)
        rows = range(gen.layer_count) if keyword is None else gen.rows_with_keyword(keyword)
        yield from gen.contexts(rows)

    def generation(self, dimension_id: int | str) -> int:
        """The dimension's generation at the instant (no mapping needed for an id)."""
        return int(self._location(self._dimension(dimension_id))[1][0])

    @property
    def generations(self) -> dict[int, int]:
        """{dimension id: generation} of every dimension at the instant."""
        return {dim: fields[0] for dim, (_, fields) in sorted(self._locations.items())}

    def layer_ids(self, dimension_id: int | str) -> list[int]:
        dimension_id = self._dimension(dimension_id)
        return (self._gens.get(dimension_id) or self._resolve(dimension_id)).layer_ids()

    def _dimension(self, dimension: int | str) -> int:
        """A dimension argument as its id: a str is the name of a dimension of the instant
        (DimensionNotFound listing the names if none has it; each dimension looked at is
        mapped, as a lookup would), anything else an id (InvalidId if it is none)."""
        if type(dimension) is not str:
            return as_id(dimension, "dimension_id")
        names = []
        for dim, (_, fields) in sorted(self._locations.items()):
            if Location(*fields).evicted:
                continue  # its name is not at hand without its region; a lookup says DimensionEvicted
            name = (self._gens.get(dim) or self._resolve(dim)).name
            if name == dimension:
                return dim
            names.append(f"{name!r} ({dim})")
        raise DimensionNotFound(dimension_id=repr(dimension), available=names)

    # ----------------------------------------------------------------- mapping

    def _location(self, dimension_id: int) -> tuple[int, _Fields]:
        found = self._locations.get(dimension_id)
        if found is None:
            raise DimensionNotFound(dimension_id=dimension_id, available=sorted(self._locations))
        return found

    def _resolve(self, dimension_id: int) -> "Generation":
        if not self._finalizer.alive:
            raise SnapshotClosed(name=self._mapped.name, sequence=self.sequence)
        entry, fields = self._location(dimension_id)
        loc = Location(*fields)
        if loc.evicted:
            raise DimensionEvicted(dimension_id=dimension_id, generation=loc.generation)
        gen = self._mapped.at(dimension_id, entry, loc, self._finalizer)
        if gen is None:  # closed meanwhile: its holds may be gone already, so nothing was mapped
            raise SnapshotClosed(name=self._mapped.name, sequence=self.sequence)
        pos = Directory.touched_position(entry)
        if not self._dir_mv[pos]:
            self._dir_mv[pos] = TOUCHED_READ
        gens = self._gens
        gens[dimension_id] = gen
        if not self._finalizer.alive:  # closed while we mapped: keep "lookups after close raise"
            gens.pop(dimension_id, None)
        return gen

    # ----------------------------------------------------------------- lifetime

    def unmap(self) -> None:
        """Drop the generations mapped so far (a forked child without a row of its own: they are
        not protected there); the next lookup in a dimension asks the reader's mapping again."""
        self._gens = {}

    def close(self) -> None:
        """Release the snapshot's pins (idempotent); contexts it returned stay valid."""
        self._gens = {}
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._locations)} dimensions"
        return f"<Snapshot {self._mapped.name!r} sequence {self.sequence}, {state}>"
