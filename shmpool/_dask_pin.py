"""One generation for a whole ``client.map``: a pin taken in the client, carried by its tasks.

A task reads whatever generation its host serves when it runs, so a publish in the middle of a
map splits it between two. A :class:`Pin` names one generation per dimension (the newest the
store holds when it is taken) and keeps those files in the store (publish does not prune a
pinned generation). In a task, ``pin.load_layer_context(dim, layer)`` reads from the host's
shared memory while the host still serves that generation (the zero-copy path, one comparison
more), and from the pinned store file once the host moved past it (mapped read-only and kept
open per worker process: the page cache, not shared memory). A pin expires ``ttl`` seconds
after it was taken (a client that died must not keep files forever); :meth:`Pin.release` ends
it sooner.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from distributed import Client

from . import _dask_host as host
from ._dask_publish import Lock, _plugin_of
from .data.context import ContextCollection, LoadedContext, MissingStep
from .data.region import Region
from .errors import InvalidArgument, ShmPoolError
from .substrate.fork_safe import ForkSafeLock
from .substrate.ids import as_id

__all__ = ["Pin", "pin", "PIN_TTL"]

PIN_TTL = 3600.0  # seconds a pin holds its files unless released


@dataclass(frozen=True)
class Pin:
    """Generations fixed for the tasks that carry this object (pickles small: a few ids)."""
    plugin: str
    store_dir: str
    generations: dict[int, int]   # dimension id -> the generation every lookup through this pin sees
    token: str
    expires: float                # time.time() after which the store may drop the pinned files
    _released: list[bool] = field(default_factory=lambda: [False], compare=False, repr=False)

    def generation(self, dimension_id: int) -> int:
        """The pinned generation of ``dimension_id``; InvalidArgument if this pin does not hold it."""
        found = self.generations.get(as_id(dimension_id, "dimension_id"))
        if found is None:
            raise InvalidArgument(argument="dimension_id", value=dimension_id,
                                  reason=f"not pinned (this pin holds dimensions {sorted(self.generations)})")
        return found

    def load_layer_context(self, dimension_id: int, layer_id: int) -> LoadedContext:
        """The layer as of the pinned generation (in a task on a served host).

        Zero-copy from the host's instance while it serves that generation; from the pinned
        store file once it moved past. Raises InvalidArgument if the pin expired or was released
        and its file is gone, LayerNotFound/DimensionNotFound as the reader does."""
        from .dask import reader  # the worker's cached Reader; dask imports this module

        generation = self.generation(dimension_id)
        ctx = reader(self.plugin).load_layer_context(dimension_id, layer_id)
        if ctx.generation == generation:
            return ctx
        del ctx
        return _stored(self, dimension_id, generation, layer_id)

    def load_contexts(self, steps: Iterable[tuple[int, int]], *, strict: bool = True) -> ContextCollection:
        """Several layers, each as of its dimension's pinned generation (``strict=False``: a
        missing layer is reported in ``.missing`` instead of raised)."""
        contexts, missing = [], []
        for position, (dim, layer) in enumerate(steps):
            try:
                contexts.append(self.load_layer_context(dim, layer))
            except LookupError as exc:
                if strict:
                    raise
                missing.append(MissingStep(position, int(dim), int(layer), str(exc)))
        return ContextCollection(contexts, missing)

    def release(self) -> None:
        """End the pin now (idempotent): the next publish may prune its generations. In the client."""
        if not self._released[0]:
            self._released[0] = True
            _pin_path(self.store_dir, self.token).unlink(missing_ok=True)

    def __enter__(self) -> "Pin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def pin(client: Client, dimension_ids: Iterable[int] | None = None, *, plugin: str | None = None,
        ttl: float = PIN_TTL) -> Pin:
    """Fix the current generation of ``dimension_ids`` (None: every dimension in the store) for
    the tasks that carry the returned Pin; use it as a context manager or :meth:`Pin.release` it.

    Blocking (it takes the publish lock, so it never pins half a publish). The client must see
    the store folder (one machine, or a shared file system mounted at the same path); a
    dimension never published through the store has nothing to pin: InvalidArgument.
    """
    if not ttl > 0:
        raise InvalidArgument(argument="ttl", value=ttl, reason="seconds, above 0")
    plugin, store_dir = _plugin_of(client, plugin)
    if not Path(store_dir).is_dir():
        raise InvalidArgument(argument="store_dir", value=store_dir,
                              reason="this client does not see the store folder; pin from a machine that does")
    with Lock(f"shmpool-publish-{plugin}", scheduler_rpc=client.scheduler, loop=client.loop):
        stored = {d: g for d, (g, _) in host.store_generations(store_dir).items()}
        wanted = sorted(stored) if dimension_ids is None else [as_id(d, "dimension_id") for d in dimension_ids]
        absent = [d for d in wanted if d not in stored]
        if absent:
            raise InvalidArgument(argument="dimension_ids", value=absent,
                                  reason="never published through shmpool.dask.publish: the store has no "
                                         "generation of them to pin")
        made = Pin(plugin, store_dir, {d: stored[d] for d in wanted}, secrets.token_hex(8), time.time() + ttl)
        path = _pin_path(store_dir, made.token)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"generations": {str(d): g for d, g in made.generations.items()},
                                   "expires": made.expires}))
        os.replace(tmp, path)
    return made


# ----------------------------------------------------------------- the store's side

def _pin_path(store_dir: str, token: str) -> Path:
    return Path(store_dir) / f"{host.PIN_PREFIX}{token}.json"


class _StoredGeneration:
    """What a LoadedContext asks of its generation, answered from a region file."""

    def __init__(self, region: Region, generation: int) -> None:
        self.region = region
        self.generation = generation
        self.name: str = getattr(region, "name")  # Region declares it in __slots__ only: invisible to mypy

    def frequency(self, row: int) -> float:
        return self.region.frequency(row)

    def keywords(self, row: int) -> tuple[str, ...]:
        return self.region.keywords(row)

    def is_text(self, row: int) -> bool:
        return self.region.is_text(row)

    def crc32(self, row: int) -> int:
        return int(self.region.index["crc32"][row])


_open: dict[tuple[str, int, int], _StoredGeneration] = {}  # (store, dimension, generation) -> mapped file
_open_lock = ForkSafeLock()  # made afresh in a forked child (shmpool/substrate/fork_safe.py)
_OPEN_MOST = 16  # pinned files kept mapped per worker process; the oldest is dropped first


def _stored(pinned: Pin, dimension_id: int, generation: int, layer_id: int) -> LoadedContext:
    layer_id = as_id(layer_id, "layer_id")  # a str key as a LayerKey: Region.row compares its text
    key = (pinned.store_dir, dimension_id, generation)
    with _open_lock:
        gen = _open.get(key)
        if gen is None:
            path = host.store_file(pinned.store_dir, dimension_id, generation)
            try:
                region = Region.open(path, verify_checksums=False)  # each context can verify() itself
            except ShmPoolError:
                if path.exists():
                    raise
                raise InvalidArgument(argument="pin", value=pinned.token,
                                      reason=f"generation {generation} of dimension {dimension_id} is no longer "
                                             f"in the store: the pin expired or was released") from None
            gen = _open[key] = _StoredGeneration(region, generation)
            while len(_open) > _OPEN_MOST:
                # Dropped, not closed: contexts handed out still hold it (their metadata reads
                # its index); it is unmapped when the last of them goes.
                del _open[next(iter(_open))]
    row = gen.region.row(layer_id)
    content = gen.region.content(layer_id)
    view = content if isinstance(content, memoryview) else memoryview(content).toreadonly()
    return LoadedContext(dimension_id, layer_id, view, gen, row)


def pinned_generations(store_dir: str | os.PathLike[str], now: float | None = None) -> set[tuple[int, int]]:
    """The (dimension, generation) pairs live pins hold; expired pin files are removed."""
    now = time.time() if now is None else now
    held: set[tuple[int, int]] = set()
    for path in Path(store_dir).glob(f"{host.PIN_PREFIX}*.json"):
        try:
            info: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written (we read it next time) or already released
        if float(info.get("expires", 0)) < now:
            path.unlink(missing_ok=True)
            continue
        held.update((int(d), int(g)) for d, g in info.get("generations", {}).items())
    return held
