"""Job arguments, results and errors as msgpack: data only, never pickle.

Layer content never travels as bytes: a LoadedContext is sent as a reference (dimension, layer,
generation) and the receiving client resolves it against its own mapping of shared memory,
without a copy. A ContextCollection travels as its references plus its missing steps.
"""

from __future__ import annotations

import struct
import traceback
from typing import Any, Callable

import msgpack
import numpy as np

from . import errors as errors_module
from .context import ContextCollection, LoadedContext, MissingStep
from .errors import JobError, ShmPoolError

__all__ = ["encode_request", "decode_request", "encode_result", "decode_result", "encode_error",
           "decode_error", "Resolver"]

EXT_LAYER = 1        # struct LAYER_REF
EXT_COLLECTION = 2   # msgpack [[ext LAYER...], [[position, dimension, layer, reason], ...]]
LAYER_REF = struct.Struct("<IQQ")  # dimension id, layer id, generation

Resolver = Callable[[int, int, int], LoadedContext]


def _default(obj: Any):
    if isinstance(obj, LoadedContext):
        return msgpack.ExtType(EXT_LAYER, LAYER_REF.pack(obj.dimension_id, obj.layer_id, obj.generation))
    if isinstance(obj, ContextCollection):
        body = [[_default(c) for c in obj.contexts],
                [[m.position, m.dimension_id, m.layer_id, m.reason] for m in obj.missing]]
        return msgpack.ExtType(EXT_COLLECTION, msgpack.packb(body, use_bin_type=True))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (memoryview, bytearray)):
        return bytes(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} as a job argument or result "
                    "(msgpack types, LoadedContext and ContextCollection only)")


def encode_request(job: str, args: tuple, kwargs: dict) -> bytes:
    return msgpack.packb([job, list(args), kwargs], default=_default, use_bin_type=True)


def decode_request(data, resolve: Resolver | None = None) -> tuple[str, list, dict]:
    """The job name and arguments; LoadedContext/ContextCollection arguments are resolved with
    ``resolve`` (the worker's own reader), as results are in the client."""
    job, args, kwargs = _unpack(data, resolve) if resolve is not None else msgpack.unpackb(
        data, raw=False, strict_map_key=False)
    return job, args, kwargs


def encode_result(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True)


def decode_result(data, resolve: Resolver) -> Any:
    return _unpack(data, resolve)


def _unpack(data, resolve: Resolver) -> Any:
    def ext_hook(code: int, payload: bytes):
        if code == EXT_LAYER:
            return resolve(*LAYER_REF.unpack(payload))
        if code == EXT_COLLECTION:
            contexts, missing = msgpack.unpackb(payload, raw=False, ext_hook=ext_hook)
            return ContextCollection(list(contexts), [MissingStep(*m) for m in missing])
        return msgpack.ExtType(code, payload)

    return msgpack.unpackb(data, raw=False, ext_hook=ext_hook, strict_map_key=False)


def encode_error(exc: BaseException) -> bytes:
    fields = getattr(exc, "_fields", None) if isinstance(exc, ShmPoolError) else None
    if fields is not None:
        try:
            msgpack.packb(fields, default=_default, use_bin_type=True)
        except (TypeError, ValueError):
            fields = None
    payload = {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc),
        "fields": fields,
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
    return msgpack.packb(payload, default=_default, use_bin_type=True)


def decode_error(data, job: str) -> BaseException:
    """Rebuild shmpool's own errors as themselves; anything else becomes a JobError."""
    info = msgpack.unpackb(data, raw=False, strict_map_key=False)
    cls = getattr(errors_module, info.get("type", ""), None)
    if (info.get("module") == errors_module.__name__ and isinstance(cls, type)
            and issubclass(cls, ShmPoolError) and info.get("fields") is not None):
        try:
            return cls(**info["fields"])
        except TypeError:
            pass
    return JobError(job=job, error_type=info.get("type", "?"), message=info.get("message", ""),
                    remote_traceback=info.get("traceback", ""))
