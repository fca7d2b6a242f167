"""Proto-dimensions: mutable, heap-backed dimensions waiting to be crystallized.

A proto made by ``Coordinator.create_proto_dimension`` starts empty and is written whole. One
made by ``Coordinator.edit_dimension`` starts as the published generation (its *base*) without
copying anything: it records only what changes (layers added or replaced, on the heap, and ids
removed), and crystallizing it writes only those (``Publisher.publish_edit``); every other layer
keeps pointing at the bytes the base generation already has in shared memory.
"""

from __future__ import annotations

import threading
import zlib
from typing import Any, Callable, Iterable

import numpy as np

from shmpool.data import arrays
from shmpool.data.context import LoadedContext
from shmpool.data.compression import inflate
from shmpool.errors import InvalidLayer, LayerNotFound, ShmPoolError
from shmpool.substrate.ids import LayerKey, as_id
from shmpool.data.layer_index import ROW_DTYPE, SLOT_WORDS, slots_for
from shmpool.data.region import FLAG_KEYED, FLAG_TEXT, FLAG_ZSTD, align, split_keywords
from shmpool.data.region_builder import RegionBuilder, keyword_tuple

from .publisher import NewLayer, Published, Publisher

__all__ = ["ProtoDimension"]


class _ProtoLayers:
    """Adapter giving LoadedContext the metadata of heap layers (generation 0 = not published)."""

    generation = 0

    def __init__(self, name: str) -> None:
        self.name = name
        self.meta: dict[int, tuple[float, tuple[str, ...], bool, int]] = {}

    def frequency(self, layer_id: int) -> float:
        return self.meta[layer_id][0]

    def keywords(self, layer_id: int) -> tuple[str, ...]:
        return self.meta[layer_id][1]

    def is_text(self, layer_id: int) -> bool:
        return self.meta[layer_id][2]

    def crc32(self, layer_id: int) -> int:
        return self.meta[layer_id][3]


class ProtoDimension:
    """A dimension under construction, on this process's heap. Thread-safe.

    Layers may be added and removed freely; ``Coordinator.crystallize`` writes them into shared
    memory as a new generation of the dimension. Until then only the coordinator's process can
    read them (:meth:`load_layer_context`). An edit (``Coordinator.edit_dimension``) starts with
    the layers of the published generation; :meth:`add_layer` then replaces a layer of the same
    id instead of refusing it, and crystallizing copies only what changed.
    """

    def __init__(self, dimension_id: int, name: str) -> None:
        dimension_id = as_id(dimension_id, "dimension_id")
        self.dimension_id = dimension_id
        self.name = name
        self._builder = RegionBuilder(dimension_id, name)
        self._layers = _ProtoLayers(name)
        self._content: dict[int, bytes] = {}
        self._lock = threading.Lock()
        # Held for a whole crystallize of this proto, and by an edit_dimension judging it stale:
        # two publications of one proto (or a publication and its replacement) never interleave.
        self._publishing = threading.Lock()
        self._base: Published | None = None
        self._publisher: Publisher | None = None
        self._base_rows: dict[int, int] = {}   # edits: layer id -> row of the base still in use
        self._removed: set[int] = set()         # edits: base ids removed or replaced
        self._ended: Callable[[], ShmPoolError] | None = None  # the error of every call once ended (_end)
        self._hold: Published | None = None     # edits: the base whose hold this proto still owns

    @classmethod
    def editing(cls, base: Published, publisher: Publisher) -> "ProtoDimension":
        """A proto that starts as ``base`` (which the caller holds: Publisher.hold_current)."""
        proto = cls(base.dimension_id, base.name)
        proto._rebase(base, publisher)
        return proto

    def _rebase(self, base: Published, publisher: Publisher) -> None:
        """Start over from ``base``, whose hold (Publisher.hold_current) this proto now owns."""
        self._base, self._publisher = base, publisher
        self._hold = base
        # One dict of ints for the ids: the proto answers membership and lookups of base layers
        # without touching shared memory; no layer bytes are copied.
        self._base_rows = dict(zip(base.rows["layer_id"].tolist(), range(len(base.rows))))
        self._removed = set()
        self._builder = RegionBuilder(base.dimension_id, base.name)
        self._content.clear()
        self._layers.meta.clear()

    def _end(self, error: Callable[[], ShmPoolError]) -> None:
        """The proto can no longer be crystallized: its coordinator stopped (an edit's base was
        unmapped with the instance; CoordinatorStateError) or its edit conflicted (EditConflict,
        final: generations only grow). Every later call raises ``error()`` rather than read a
        closed mapping (a bare ValueError) or mutate what nothing will publish."""
        with self._lock:
            self._ended = error

    def _let_go_of(self, base: Published, publisher: Publisher) -> None:
        """Release the hold on ``base`` if this proto still owns it: once, whoever asks first (a
        crystallize that published it, a new edit_dimension that replaces it as stale)."""
        with self._lock:
            if self._hold is not base:
                return
            self._hold = None
        publisher.release_hold(base)

    def _check_live(self) -> None:
        if self._ended is not None:
            raise self._ended()

    @property
    def base_generation(self) -> int | None:
        """The published generation an edit started from; None for a proto built from scratch."""
        return None if self._base is None else self._base.generation

    def add_layer(self, layer_id: int | str, content: bytes | bytearray | memoryview | str | np.ndarray[Any, Any], *,
                  frequency: float = 0.0, keywords: Iterable[str] = ()) -> None:
        """Add one layer (str is stored as UTF-8 text, a numpy array as an array layer, any other
        byte buffer as binary); in an edit, replace the layer of that id. A str ``layer_id`` is a
        layer key (docs/usage.md).

        ``keywords`` is a list (any iterable) of strings; a single str is refused, not split into
        characters. Raises InvalidId (a TypeError) for an id that is neither an int nor a str,
        InvalidLayer for any other bad input (a duplicate id, outside an edit).
        """
        layer_id = as_id(layer_id, "layer_id")
        self._check_live()
        self._check_key_of_base(layer_id)
        if isinstance(content, np.ndarray):  # once, here: the builder and the heap copy store the same bytes
            content = arrays.encode(content, dimension_id=self.dimension_id, layer_id=layer_id)
        # Normalised once, here: the builder and the heap copy must see the same keywords, and
        # an iterator can be consumed only once.
        keywords = keyword_tuple(self.dimension_id, layer_id, keywords)
        with self._lock:
            replacing = self._base is not None and layer_id in self._content
            if replacing and not self._holds_key(layer_id):
                raise self._collision(layer_id, self._key_of(layer_id))
            if replacing:
                old_key = self._builder.key_of(layer_id)
                self._builder.remove_layer(layer_id)
            try:
                self._builder.add_layer(layer_id, content, frequency=frequency, keywords=keywords)
            except BaseException:
                if replacing:  # the old heap layer stays as it was, its key too
                    old_id = int(layer_id) if old_key is None else LayerKey(old_key.decode("utf-8"))
                    self._builder.add_layer(old_id, self._content[layer_id], frequency=self._layers.meta[layer_id][0],
                                            keywords=self._layers.meta[layer_id][1],
                                            text=self._layers.meta[layer_id][2])
                raise
            is_text = isinstance(content, str)
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            self._content[layer_id] = data
            self._layers.meta[layer_id] = (float(frequency), keywords, is_text, zlib.crc32(data))
            if layer_id in self._base_rows:
                self._removed.add(layer_id)

    def remove_layer(self, layer_id: int) -> None:
        """Remove one layer (in an edit, a layer of the base too). Raises LayerNotFound."""
        layer_id = as_id(layer_id, "layer_id")
        self._check_live()
        with self._lock:
            in_base = layer_id in self._base_rows and layer_id not in self._removed
            if (in_base or layer_id in self._content) and not self._holds_key(layer_id):
                raise self._not_found(layer_id)  # another key's layer: the id matched, the text does not
            if layer_id in self._content:
                self._builder.remove_layer(layer_id)
                del self._content[layer_id]
                del self._layers.meta[layer_id]
            elif not in_base:
                raise self._not_found(layer_id)
            if layer_id in self._base_rows:
                self._removed.add(layer_id)

    def load_layer_context(self, layer_id: int) -> LoadedContext:
        """The layer as this proto holds it (generation 0); raises LayerNotFound, or InvalidId
        for a non-int id. A layer an edit kept from its base is returned as a private copy:
        the base may be released once the edit is crystallized."""
        layer_id = as_id(layer_id, "layer_id")
        self._check_live()
        content = self._content.get(layer_id)
        if (content is not None or layer_id in self._base_rows) and not self._holds_key(layer_id):
            raise self._not_found(layer_id)
        if content is not None:
            return LoadedContext(self.dimension_id, layer_id, memoryview(content), self._layers, layer_id)
        row = self._base_rows.get(layer_id)
        if row is None or layer_id in self._removed:
            raise self._not_found(layer_id)
        base, publisher = self._base, self._publisher
        assert base is not None and publisher is not None  # only an edit has base rows
        r = base.rows[row]
        stored = publisher.stored_layer(base, row)
        flags = int(r["flags"])
        data = inflate(stored, source=base.source, layer_id=layer_id) if flags & FLAG_ZSTD else bytes(stored)
        meta = _ProtoLayers(self.name)
        meta.meta[layer_id] = (float(r["frequency"]), split_keywords(publisher.keyword_bytes(base, row)),
                               bool(flags & FLAG_TEXT), int(r["crc32"]))
        return LoadedContext(self.dimension_id, layer_id, memoryview(data), meta, layer_id)

    def _key_of(self, layer_id: int) -> bytes | None:
        """The key text of the layer of ``layer_id`` this proto holds (its own, else its base's)."""
        if layer_id in self._content:
            return self._builder.key_of(layer_id)
        base, publisher = self._base, self._publisher
        assert base is not None and publisher is not None  # only an edit has base rows
        return publisher.key_bytes(base, self._base_rows[layer_id])

    def _holds_key(self, layer_id: int) -> bool:
        """Whether a lookup of ``layer_id`` (an id, or a LayerKey) may return the layer of its id
        this proto holds: always for an id, for a key only if that layer holds the same text."""
        return type(layer_id) is not LayerKey or self._key_of(layer_id) == layer_id.utf8

    def _check_key_of_base(self, layer_id: int) -> None:
        """An edit does not let a key replace a base layer of another key whose id it shares."""
        if (type(layer_id) is LayerKey and layer_id in self._base_rows and layer_id not in self._content
                and layer_id not in self._removed and not self._holds_key(layer_id)):
            raise self._collision(layer_id, self._key_of(layer_id))

    def _collision(self, layer_id: int, held: bytes | None) -> InvalidLayer:
        other = "a layer added by its bare id" if held is None else f"key {held.decode('utf-8')!r}"
        return InvalidLayer(dimension_id=self.dimension_id, layer_id=layer_id,
                            reason=f"key {layer_id!r} has key id {int(layer_id)}, as {other} has: one of them "
                                   "needs another key")

    def layer_ids(self) -> list[int]:
        base = (i for i in self._base_rows if i not in self._removed)
        return sorted({*base, *self._content})

    def nbytes(self) -> int:
        """Bytes crystallization will allocate: the whole region, or for an edit the changed
        layers plus the new layer index."""
        with self._lock:  # the builder is not thread-safe: its layout is computed (and cached) here
            if self._base is None:
                return self._builder.nbytes()
            changed = 0
            for _, layer in self._builder.stored_layers():
                changed = align(changed) + len(layer.content) + len(layer.keyword_bytes) + len(layer.key or b"")
            rows = len(self)
        return changed + rows * ROW_DTYPE.itemsize + slots_for(rows) * SLOT_WORDS * 8 + 512

    def _settled(self) -> RegionBuilder:
        """The builder as it is now, copied under the lock: what a crystallize writes, whatever
        add_layer calls other threads make meanwhile. (Written from the live builder, a layer
        added during the write cached a layout of the old layer set in it for good: every later
        crystallize failed with RegionFormatError "holds 25 layers ..., expected 28".)"""
        with self._lock:
            return self._builder.copy()

    def changes(self) -> tuple[list[NewLayer], list[int]]:
        """An edit's new or replaced layers, as stored, and the base ids it removes or replaces."""
        with self._lock:
            new = [NewLayer(layer_id, layer.content, (FLAG_TEXT if layer.text else 0) | (FLAG_ZSTD if layer.zstd else 0)
                            | (0 if layer.key is None else FLAG_KEYED), layer.crc, layer.frequency, layer.keyword_bytes,
                            layer.key)
                   for layer_id, layer in self._builder.stored_layers()]
            return new, sorted(self._removed)

    def _not_found(self, layer_id: int) -> LayerNotFound:
        ids = self.layer_ids()
        return LayerNotFound(dimension_id=self.dimension_id, layer_id=layer_id, generation=0,
                             layer_count=len(ids), sample_ids=ids[:12])

    @property
    def builder(self) -> RegionBuilder:
        return self._builder

    def __len__(self) -> int:
        base = len(self._base_rows) - len(self._removed)
        return base + len(self._content)

    def __repr__(self) -> str:
        edit = f", edit of generation {self._base.generation}" if self._base is not None else ""
        return f"<ProtoDimension {self.dimension_id} {self.name!r}: {len(self)} layers{edit}>"

