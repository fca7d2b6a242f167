"""Job arguments, results and errors as msgpack: data only, never pickle.

Layer content never travels as bytes: a LoadedContext is sent as a reference (dimension, layer,
generation) and the receiving client resolves it against its own mapping of shared memory,
without a copy. A ContextCollection travels as its references plus its missing steps. Tuples
travel as an extension type and arrive as tuples (``divmod`` returns ``(q, r)`` in the client,
as with any Executor), so they also work as dict keys.

An exception travels as its type's module and name, its ``args`` (when msgpack can carry them),
its message and its traceback text. The client rebuilds it as the same type only when that type
is an Exception of a module the client has already imported (builtins always, shmpool's own
errors from their fields): nothing is imported, and nothing but a constructor taking the args
runs, because of what a worker sends. Anything else becomes a JobError.

This is shmpool's one error wire format: the Dask host daemon (shmpool._dask_host) sends the
same payload (:func:`encode_error`) inside its JSON replies, and rebuilds it with
:func:`rebuild_error`, so an error means the same on either channel. An Enum travels as its
value (a str Enum's ``str()`` is its qualified name on Python 3.11, which its constructor
refuses), so ``AllocationFailed.kind`` arrives as the AllocationFailure it left as.
"""

from __future__ import annotations

import enum
import math
import struct
import sys
import traceback
from typing import Any, Callable, NamedTuple, Union

import msgpack
import numpy as np
from loguru import logger

from .. import errors as errors_module
from ..data.context import ContextCollection, LoadedContext, MissingStep
from ..errors import InvalidArgument, JobError, RemoteTraceback, ShmPoolError

__all__ = ["check_job_timeout", "encode_request", "decode_request", "decode_job", "JobRequest", "RequestFlags", "encode_result",
           "decode_result", "encode_error", "decode_error", "error_info", "rebuild_error", "Resolver"]

EXT_LAYER = 1        # struct LAYER_REF
EXT_COLLECTION = 2   # msgpack [[ext LAYER...], [[position, dimension, layer, reason], ...]]
EXT_TUPLE = 3        # msgpack array of the items
LAYER_REF = struct.Struct("<IQQ")  # dimension id, layer id, generation

Resolver = Callable[[int, int, int], LoadedContext]
Buffer = Union[bytes, bytearray, memoryview]  # what a slot or a spill hands the decoder


class RequestFlags(enum.IntFlag):
    """How a worker runs a request (the 4th element of a request; absent means NAMED)."""
    NAMED = 0      # a job name: fn(reader, *args, **kwargs)
    PLAIN = 1      # a submitted callable's module:qualname: fn(*args, **kwargs)
    CHUNK = 2      # args is a list of argument lists (map's chunksize): [fn(*a) for a in args]


class JobRequest(NamedTuple):
    """A request as it crosses the job board: ``[job, args, kwargs(, flags, job_timeout)]``."""
    job: str
    args: list[Any]
    kwargs: dict[str, Any]
    flags: RequestFlags = RequestFlags.NAMED
    job_timeout: float | None = None  # seconds; None: the coordinator's default


def check_job_timeout(value: Any, argument: str = "job_timeout") -> float | None:
    """A job_timeout as seconds (None: none of its own); InvalidArgument unless a number above 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise InvalidArgument(argument=argument, value=value,
                              reason="seconds, a number above 0 (float('inf') for no limit), or None")
    return float(value)


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True, strict_types=True)


def _default(obj: Any) -> Any:
    # strict_types sends every subclass here: tuples (kept as tuples), and subclasses of the
    # plain types (IntEnum, OrderedDict, np.float64, ...) as their base value.
    if isinstance(obj, tuple):
        return msgpack.ExtType(EXT_TUPLE, _pack(list(obj)))
    if isinstance(obj, LoadedContext):
        return msgpack.ExtType(EXT_LAYER, LAYER_REF.pack(obj.dimension_id, obj.layer_id, obj.generation))
    if isinstance(obj, ContextCollection):
        body = [[_default(c) for c in obj.contexts],
                [[m.position, m.dimension_id, m.layer_id, m.reason] for m in obj.missing]]
        return msgpack.ExtType(EXT_COLLECTION, msgpack.packb(body, use_bin_type=True))
    if isinstance(obj, enum.Enum):  # before str and int: str(a str Enum) is not its value
        return obj.value
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, (bytes, memoryview, bytearray)):
        return bytes(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, (list, set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} as a job argument or result "
                    "(msgpack types, tuples, LoadedContext and ContextCollection only)")


def encode_request(job: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, flags: RequestFlags = RequestFlags.NAMED,
                   job_timeout: float | None = None) -> bytes:
    if flags == RequestFlags.NAMED and job_timeout is None:
        return _pack([job, list(args), kwargs])  # the common case stays three elements
    return _pack([job, list(args), kwargs, int(flags), job_timeout])


def decode_job(data: Buffer, resolve: Resolver | None = None) -> JobRequest:
    """The request in full; LoadedContext/ContextCollection arguments are resolved with
    ``resolve`` (the worker's own reader), as results are in the client."""
    parts = _unpack(data, resolve)
    if len(parts) == 3:
        return JobRequest(*parts)
    job, args, kwargs, flags, job_timeout = parts
    return JobRequest(job, args, kwargs, RequestFlags(flags), job_timeout)


def decode_request(data: Buffer, resolve: Resolver | None = None) -> tuple[str, list[Any], dict[str, Any]]:
    """The job name and arguments (see :func:`decode_job` for the whole request)."""
    job, args, kwargs, *_ = decode_job(data, resolve)
    return job, args, kwargs


def encode_result(value: Any) -> bytes:
    return _pack(value)


def decode_result(data: Buffer, resolve: Resolver) -> Any:
    return _unpack(data, resolve)


def _unpack(data: Buffer, resolve: Resolver | None = None) -> Any:
    def ext_hook(code: int, payload: bytes) -> Any:
        if code == EXT_TUPLE:
            return tuple(msgpack.unpackb(payload, raw=False, ext_hook=ext_hook, strict_map_key=False))
        if code == EXT_LAYER and resolve is not None:
            return resolve(*LAYER_REF.unpack(payload))
        if code == EXT_COLLECTION and resolve is not None:
            contexts, missing = msgpack.unpackb(payload, raw=False, ext_hook=ext_hook)
            return ContextCollection(list(contexts), [MissingStep(*m) for m in missing])
        return msgpack.ExtType(code, payload)

    return msgpack.unpackb(data, raw=False, ext_hook=ext_hook, strict_map_key=False)


def _packable(value: Any) -> Any:
    try:
        _pack(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value


def encode_error(exc: BaseException) -> bytes:
    fields = getattr(exc, "_fields", None) if isinstance(exc, ShmPoolError) else None
    cls = type(exc)
    payload = {
        "type": cls.__name__,
        "qualname": cls.__qualname__,
        "module": cls.__module__,
        "args": _packable(list(exc.args)),
        "message": str(exc),
        "fields": _packable(fields) if fields is not None else None,
        "traceback": "".join(traceback.format_exception(cls, exc, exc.__traceback__)),
    }
    return _pack(payload)


def decode_error(data: Buffer, job: str) -> BaseException:
    """The job's exception as its own type where that is safe (module docstring), else a
    JobError; the worker's traceback is chained as ``__cause__`` (a RemoteTraceback)."""
    info = error_info(data)
    exc = rebuild_error(info)
    if exc is None:
        exc = JobError(job=job, error_type=str(info.get("type", "?")), message=str(info.get("message", "")),
                       remote_traceback=str(info.get("traceback", "")))
        if info.get("traceback"):
            exc.__cause__ = RemoteTraceback(str(info["traceback"]))
    return exc


def error_info(data: Buffer) -> dict[str, Any]:
    """The fields of an encoded error (type, qualname, module, args, message, fields, traceback)."""
    info = _unpack(data)
    if not isinstance(info, dict):
        raise TypeError(f"an encoded error is a map, not a {type(info).__name__}")
    return info


def rebuild_error(info: dict[str, Any]) -> BaseException | None:
    """The error :func:`error_info` describes as its own type, its traceback chained as
    ``__cause__``; None when that is not safe or not possible (the caller picks the stand-in)."""
    exc = _rebuild(info)
    if exc is not None and info.get("traceback"):
        exc.__cause__ = RemoteTraceback(str(info["traceback"]))
    return exc


def _rebuild(info: dict[str, Any]) -> BaseException | None:
    module, name = info.get("module"), info.get("qualname") or info.get("type") or ""
    cls = getattr(errors_module, info.get("type", ""), None) if module == errors_module.__name__ else None
    fields = info.get("fields")
    if isinstance(cls, type) and issubclass(cls, ShmPoolError) and isinstance(fields, dict):
        make: Callable[..., BaseException] = cls  # every ShmPoolError subclass takes keywords only
        try:
            return make(**fields)
        except Exception as refused:  # fields this version's constructor does not take: rebuilt from args below
            logger.debug("rebuilding {} from its fields failed: {}", cls.__name__, refused)
    owner = sys.modules.get(module) if isinstance(module, str) else None  # never an import
    found: Any = owner
    for part in name.split(".") if owner is not None and name else ():
        found = getattr(found, part, None)
    args = info.get("args")
    if not (isinstance(found, type) and issubclass(found, Exception) and isinstance(args, list)):
        return None
    try:
        exc = found(*args)
    except Exception:  # a constructor that wants other arguments than its args: a JobError then
        return None
    return exc if isinstance(exc, found) else None
