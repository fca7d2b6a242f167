"""Proto-dimensions: mutable, heap-backed dimensions waiting to be crystallized."""

from __future__ import annotations

import threading
import zlib
from typing import Iterable

from shmpool.data.context import LoadedContext
from shmpool.errors import LayerNotFound
from shmpool.substrate.ids import as_id
from shmpool.data.region_builder import RegionBuilder, keyword_tuple

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

    Layers may be added and removed freely; ``Coordinator.crystallize`` writes the layers once
    into shared memory as a new generation of the dimension. Until then only the coordinator's
    process can read them (:meth:`load_layer_context`).
    """

    def __init__(self, dimension_id: int, name: str) -> None:
        dimension_id = as_id(dimension_id, "dimension_id")
        self.dimension_id = dimension_id
        self.name = name
        self._builder = RegionBuilder(dimension_id, name)
        self._layers = _ProtoLayers(name)
        self._content: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def add_layer(self, layer_id: int, content: bytes | str, *, frequency: float = 0.0,
                  keywords: Iterable[str] = ()) -> None:
        """Add one layer (str is stored as UTF-8 text).

        ``keywords`` is a list (any iterable) of strings; a single str is refused, not split into
        characters. Raises InvalidId (a TypeError) for an id that is not an int, InvalidLayer
        for any other bad input.
        """
        layer_id = as_id(layer_id, "layer_id")
        # Normalised once, here: the builder and the heap copy must see the same keywords, and
        # an iterator can be consumed only once.
        keywords = keyword_tuple(self.dimension_id, layer_id, keywords)
        with self._lock:
            self._builder.add_layer(layer_id, content, frequency=frequency, keywords=keywords)
            is_text = isinstance(content, str)
            data = content.encode("utf-8") if is_text else bytes(content)
            self._content[layer_id] = data
            self._layers.meta[layer_id] = (float(frequency), keywords, is_text, zlib.crc32(data))

    def remove_layer(self, layer_id: int) -> None:
        layer_id = as_id(layer_id, "layer_id")
        with self._lock:
            if layer_id not in self._content:
                raise self._not_found(layer_id)
            self._builder.remove_layer(layer_id)
            del self._content[layer_id]
            del self._layers.meta[layer_id]

    def load_layer_context(self, layer_id: int) -> LoadedContext:
        """The heap copy of a layer (generation 0); raises LayerNotFound, or InvalidId for a non-int id."""
        layer_id = as_id(layer_id, "layer_id")
        content = self._content.get(layer_id)
        if content is None:
            raise self._not_found(layer_id)
        return LoadedContext(self.dimension_id, layer_id, memoryview(content), self._layers, layer_id)

    def layer_ids(self) -> list[int]:
        return sorted(self._content)

    def nbytes(self) -> int:
        """Size of the region crystallization will write."""
        return self._builder.nbytes()

    def _not_found(self, layer_id: int) -> LayerNotFound:
        ids = sorted(self._content)
        return LayerNotFound(dimension_id=self.dimension_id, layer_id=layer_id, generation=0,
                             layer_count=len(ids), sample_ids=ids[:12])

    @property
    def builder(self) -> RegionBuilder:
        return self._builder

    def __len__(self) -> int:
        return len(self._content)

    def __repr__(self) -> str:
        return f"<ProtoDimension {self.dimension_id} {self.name!r}: {len(self)} layers>"
