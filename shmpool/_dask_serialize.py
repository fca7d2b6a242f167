"""How shmpool's contexts leave a Dask worker: registered with Dask's serializers and sizeof.

A LoadedContext returned by a task (or a ContextCollection) goes out as a frame: the comm
writes it straight from shared memory (the frame keeps the generation pinned until it is sent)
and nothing is pickled. The receiver gets a context over its own copy of the bytes, with the
same metadata and verify(). Imported by shmpool.dask; nothing here is public.
"""

from __future__ import annotations

from typing import Any

from dask.sizeof import sizeof as _sizeof
from distributed.protocol.serialize import dask_deserialize as _dask_deserialize
from distributed.protocol.serialize import dask_serialize as _dask_serialize

from .data.context import ContextCollection, LoadedContext, MissingStep

__all__: list[str] = []

# Dask's dispatchers are unannotated; registering through Any keeps the functions below typed.
dask_serialize: Any = _dask_serialize
dask_deserialize: Any = _dask_deserialize
sizeof: Any = _sizeof


class _Detached:
    """Metadata of a context whose bytes were copied out of shared memory (row is always 0)."""

    __slots__ = ("generation", "name", "_frequency", "_keywords", "_is_text", "_crc32")

    def __init__(self, meta: dict[str, Any]) -> None:
        self.generation = int(meta["generation"])
        self.name = str(meta["name"])
        self._frequency = float(meta["frequency"])
        self._keywords = tuple(str(k) for k in meta["keywords"])
        self._is_text = bool(meta["is_text"])
        self._crc32 = int(meta["crc32"])

    def frequency(self, _row: int) -> float:
        return self._frequency

    def keywords(self, _row: int) -> tuple[str, ...]:
        return self._keywords

    def is_text(self, _row: int) -> bool:
        return self._is_text

    def crc32(self, _row: int) -> int:
        return self._crc32


def _meta(ctx: LoadedContext) -> dict[str, Any]:
    return {"dimension_id": ctx.dimension_id, "layer_id": ctx.layer_id, "generation": ctx.generation,
            "name": ctx.dimension_name, "frequency": ctx.frequency, "keywords": list(ctx.keywords),
            "is_text": ctx.is_text, "crc32": ctx.crc32}


def _rebuilt(meta: dict[str, Any], frame: Any) -> LoadedContext:
    content = memoryview(frame).cast("B").toreadonly()
    return LoadedContext(int(meta["dimension_id"]), int(meta["layer_id"]), content, _Detached(meta), 0)


def _serialize_context(ctx: LoadedContext) -> tuple[dict[str, Any], list[Any]]:
    return {"context": _meta(ctx)}, [ctx.content]


def _deserialize_context(header: dict[str, Any], frames: list[Any]) -> LoadedContext:
    return _rebuilt(header["context"], frames[0])


def _serialize_collection(coll: ContextCollection) -> tuple[dict[str, Any], list[Any]]:
    missing = [[m.position, m.dimension_id, m.layer_id, m.reason] for m in coll.missing]
    return {"contexts": [_meta(c) for c in coll.contexts], "missing": missing}, [c.content for c in coll.contexts]


def _deserialize_collection(header: dict[str, Any], frames: list[Any]) -> ContextCollection:
    contexts = [_rebuilt(meta, frame) for meta, frame in zip(header["contexts"], frames)]
    missing = [MissingStep(int(p), int(d), int(l), str(r)) for p, d, l, r in header["missing"]]
    return ContextCollection(contexts, missing)


def _sizeof_context(ctx: LoadedContext) -> int:
    return len(ctx.content) + 200  # what it costs once it leaves the host (a copy)


def _sizeof_collection(coll: ContextCollection) -> int:
    return coll.total_bytes + 200 * (len(coll.contexts) + len(coll.missing) + 1)


dask_serialize.register(LoadedContext)(_serialize_context)
dask_deserialize.register(LoadedContext)(_deserialize_context)
dask_serialize.register(ContextCollection)(_serialize_collection)
dask_deserialize.register(ContextCollection)(_deserialize_collection)
sizeof.register(LoadedContext)(_sizeof_context)
sizeof.register(ContextCollection)(_sizeof_collection)
