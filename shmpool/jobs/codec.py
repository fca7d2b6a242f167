"""Job arguments, results and errors as msgpack: data only, never pickle.

Layer content never travels as bytes: a LoadedContext is sent as a reference (dimension, layer,
generation) and the receiving client resolves it against its own mapping of shared memory,
without a copy. A ContextCollection travels as its references plus its missing steps. Tuples
travel as an extension type and arrive as tuples (``divmod`` returns ``(q, r)`` in the client,
as with any Executor), so they also work as dict keys. A numpy array travels as an extension type
too: its dtype (numpy's own ``.npy`` descr, a str or a list of fields, never pickle), shape, order
and raw bytes; it arrives as an ndarray of its own with the same dtype, shape, order and values.
Arrays of objects are refused: their bytes are pointers, not data.

A large array *argument* does not travel in the request at all (shmpool/jobs/arg_spill.py): when a
client encodes with :func:`encode_spilling`, an array above its threshold is written as
EXT_SPILLED_ARRAY, its dtype, shape, order and an offset into the request's argument allocation,
and an :class:`ArgumentPlan` keeps the array itself for the client to copy there, once. A worker decodes it as a
read-only ndarray over that allocation: no copy.

What msgpack cannot carry (an object, an int beyond 64 bits) is refused with InvalidArgumentType,
a TypeError naming the argument (``args[1]``, ``kwargs['key']``) or the job whose result it was.

An exception travels as its type's module and name, its ``args`` (when msgpack can carry them),
its message and its traceback text. The client rebuilds it as the same type only when that type
is an Exception of a module the client has already imported (builtins always, shmpool's own
errors from their fields), or SystemExit / KeyboardInterrupt (a job's ``sys.exit()`` arrives as
itself, as ProcessPoolExecutor delivers it): nothing is imported, and nothing but a constructor
taking the args runs, because of what a worker sends. Anything else becomes a JobError.

This is shmpool's one error wire format: the Dask host daemon (shmpool._dask_host) sends the
same payload (:func:`encode_error`) inside its JSON replies, and rebuilds it with
:func:`rebuild_error`, so an error means the same on either channel. An Enum travels as its
value (a str Enum's ``str()`` is its qualified name on Python 3.11, which its constructor
refuses), so ``AllocationFailed.kind`` arrives as the AllocationFailure it left as.
"""

from __future__ import annotations

import enum
import math
import numbers
import reprlib
import struct
import sys
import threading
import traceback
import weakref
from typing import Any, Callable, Literal, NamedTuple, Union

import msgpack
import numpy as np
from ..substrate._log import logger

from .. import errors as errors_module
from ..data.context import ContextCollection, LoadedContext, MissingStep
from ..errors import InvalidArgument, InvalidArgumentType, JobError, RemoteTraceback, ShmPoolError
from ..substrate.timeouts import MAX_TIMEOUT

__all__ = ["check_job_timeout", "ArgumentPlan", "SpilledArray", "ArgumentSource", "encode_request", "encode_spilling", "decode_request", "decode_job", "request_header", "JobRequest", "RequestFlags", "encode_result",
           "decode_result", "encode_error", "decode_error", "error_info", "rebuild_error", "Resolver",
           "Decoder", "decoder"]

EXT_LAYER = 1        # struct LAYER_REF
EXT_COLLECTION = 2   # msgpack [[ext LAYER...], [[position, dimension, layer, reason], ...]]
EXT_TUPLE = 3        # msgpack array of the items
EXT_ARRAY = 4        # ARRAY_HEADER_LEN, msgpack [descr, shape, fortran], then the array's raw bytes
EXT_SPILLED_ARRAY = 5  # msgpack [descr, shape, fortran, offset]: the bytes lie at offset in the
                       # allocation the slot's ARG_RECORD / ARG_SERIAL name (arg_spill.py)
SPILL_ALIGN = 64     # offsets of spilled arrays within their allocation: any dtype's alignment
LAYER_REF = struct.Struct("<IQQ")  # dimension id, layer id, generation
ARRAY_HEADER_LEN = struct.Struct("<I")  # bytes of the msgpack header that follows
# Every builtin BaseException that is not an Exception and that a job can raise on purpose: rebuilt
# as itself like an Exception (GeneratorExit is the interpreter's own, and stays a JobError).
_BASE_EXCEPTIONS_REBUILT = (SystemExit, KeyboardInterrupt)

Resolver = Callable[[int, int, int], LoadedContext]
Buffer = Union[bytes, bytearray, memoryview]  # what a slot or a spill hands the decoder


class RequestFlags(enum.IntFlag):
    """How a worker runs a request (the 4th element of a request; absent means NAMED)."""
    NAMED = 0      # a job name: fn(reader, *args, **kwargs)
    PLAIN = 1      # a submitted callable's module:qualname: fn(*args, **kwargs)
    CHUNK = 2      # args is a list of argument lists (map's chunksize): [fn(*a) for a in args]
    SINGLE = 4     # with CHUNK, args is a list of single arguments (map over one iterable):
                   # [fn(a) for a in args], one msgpack array less and no list made per item


# The flags as plain ints, for the job path: an IntFlag operation builds an enum member
# (0.5-1 us each, measured), a job's request is tested for two of them.
FLAG_PLAIN, FLAG_CHUNK, FLAG_SINGLE = int(RequestFlags.PLAIN), int(RequestFlags.CHUNK), int(RequestFlags.SINGLE)


class JobRequest(NamedTuple):
    """A request as it crosses the job board: ``[job, args, kwargs(, flags, job_timeout)]``."""
    job: str
    args: list[Any]
    kwargs: dict[str, Any]
    flags: int = 0  # RequestFlags bits, kept a plain int (FLAG_PLAIN, FLAG_CHUNK, FLAG_SINGLE)
    job_timeout: float | None = None  # seconds; None: the coordinator's default


def check_job_timeout(value: Any, argument: str = "job_timeout") -> float | None:
    """A job_timeout as seconds (None: none of its own); InvalidArgument unless a number above 0.
    Above MAX_TIMEOUT (1e9 s) it is float("inf"), no limit: a deadline that far is past the int64
    nanoseconds of the slot's DEADLINE word, and the worker failed every job it bounded."""
    if value is None:
        return None
    # Any real number, numpy's too, as shmpool.substrate.timeouts takes every other timeout.
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not real or math.isnan(value) or value <= 0:
        raise InvalidArgument(argument=argument, value=value,
                              reason="seconds, a number above 0 (float('inf') for no limit), or None")
    return math.inf if value > MAX_TIMEOUT else float(value)


class SpilledArray(NamedTuple):
    """An array argument to be copied into the request's argument allocation at ``offset``."""
    array: np.ndarray[Any, Any]
    offset: int
    order: Literal["C", "F"]


class ArgumentPlan:
    """While a request is encoded with it: arrays of more than ``threshold`` bytes are left out of
    the request (EXT_SPILLED_ARRAY) and listed in ``arrays``, at aligned offsets of an allocation
    of ``nbytes`` that the client makes afterwards (shmpool/jobs/arg_spill.py)."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.arrays: list[SpilledArray] = []
        self.nbytes = 0

    def take(self, array: np.ndarray[Any, Any], fortran: bool) -> int:
        """List ``array``; returns its offset in the allocation."""
        offset = -(-self.nbytes // SPILL_ALIGN) * SPILL_ALIGN
        self.arrays.append(SpilledArray(array, offset, "F" if fortran else "C"))
        self.nbytes = offset + array.nbytes
        return offset


class ArgumentSource:
    """Where a worker's decoder finds spilled arrays: ``memory`` is the running request's argument
    allocation as one uint8 ndarray (set by :meth:`lend` for the request being decoded, None
    otherwise).

    Every array decoded from it is an ndarray view *of that ndarray* (numpy keeps it as their
    ``base``, and as the base of every view made of them: ``x[1::2]``, ``x.T``, a memoryview of
    x), so it lives exactly as long as some array still points into the allocation. The weak
    reference :meth:`lend` returns tells the worker, after the job, whether the job kept one
    (shmpool/jobs/arg_spill.py). A view of the memoryview itself would not tell: numpy holds
    the memoryview's exporter (the pool's mmap) as base, not the memoryview."""

    def __init__(self) -> None:
        self.memory: np.ndarray[Any, Any] | None = None

    def lend(self, view: memoryview) -> "weakref.ref[np.ndarray[Any, Any]]":
        """Decode from ``view`` next; a weak reference to what the arrays made of it hold."""
        memory = self.memory = np.frombuffer(view, np.uint8)
        memory.flags.writeable = False  # x.base too: the client's bytes, read by a requeued run too
        return weakref.ref(memory)


class _Spilling:
    """This thread's encode in progress with :func:`encode_spilling`: arrays of more than ``over``
    bytes spill (-1: none does), into ``plan``. One per thread, made once: a request costs two
    attribute stores, not a threading.local attribute round each (~1 us measured)."""
    __slots__ = ("over", "plan")

    def __init__(self) -> None:
        self.over = -1
        self.plan: ArgumentPlan | None = None


_OPTIONS: dict[str, Any] = {"use_bin_type": True, "strict_types": True}
_local = threading.local()  # this thread's Packer: making one per message costs ~0.4 us


def _pack(value: Any) -> bytes:
    # The thread's Packer is taken out while in use, so a nested pack on this thread (a tuple
    # inside, a signal handler that sends a job) makes its own instead of resetting ours mid-way.
    local = _local
    packer = getattr(local, "packer", None)
    if packer is None:
        packer = msgpack.Packer(default=_default, **_OPTIONS)
    local.packer = None
    try:
        packed: bytes = packer.pack(value)
        return packed
    finally:
        local.packer = packer


def _refusal(exc: Exception) -> str:
    """Why msgpack refused a value, in the terms of usage.md's table."""
    if isinstance(exc, OverflowError):  # msgpack's "Integer value out of range"
        return ("cannot send an int beyond 64 bits (msgpack carries -2**63 .. 2**64-1): "
                "send it as a str, or as bytes with int.to_bytes")
    return str(exc)


def _brief(value: Any) -> str:
    """A short repr for an error message: reprlib's, or the type's name when even that fails
    (an int of more than 4300 digits cannot be turned into a str at all)."""
    try:
        return reprlib.repr(value)
    except ValueError:
        return f"<{type(value).__name__}>"


def _pack_named(value: Any, argument: str) -> bytes:
    """``_pack(value)``; what it cannot carry is InvalidArgumentType naming ``argument``."""
    try:
        return _pack(value)
    except (TypeError, OverflowError) as exc:
        raise InvalidArgumentType(argument=argument, value=_brief(value), reason=_refusal(exc)) from None


def _name_unsendable(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], chunk: bool,
                     single: bool = False) -> None:
    """Raise InvalidArgumentType for the first argument msgpack cannot carry (none: return)."""
    for position, arg in enumerate(args):
        if chunk and single:  # map over one iterable: each item is the one argument of its call
            _pack_named(arg, f"item {position} of the chunk, args[0]")
        elif chunk:  # map's chunksize: each item is an argument list of its own
            for inner, value in enumerate(arg):
                _pack_named(value, f"item {position} of the chunk, args[{inner}]")
        else:
            _pack_named(arg, f"args[{position}]")
    for key, value in kwargs.items():
        _pack_named(value, f"kwargs[{key!r}]")


def _default(obj: Any) -> Any:
    # strict_types sends every subclass here: tuples (kept as tuples), and subclasses of the
    # plain types (IntEnum, OrderedDict, np.float64, ...) as their base value.
    if isinstance(obj, tuple):
        return msgpack.ExtType(EXT_TUPLE, _pack(list(obj)))
    if isinstance(obj, np.ndarray):
        return _array_ext(obj)
    if isinstance(obj, LoadedContext):
        return msgpack.ExtType(EXT_LAYER, LAYER_REF.pack(obj.dimension_id, obj.layer_id, obj.generation))
    if isinstance(obj, ContextCollection):
        body = [[_default(c) for c in obj.contexts],
                [[m.position, m.dimension_id, m.layer_id, m.reason] for m in obj.missing]]
        return msgpack.ExtType(EXT_COLLECTION, msgpack.packb(body, use_bin_type=True))
    if isinstance(obj, enum.Enum):  # before str and int: str(a str Enum) is not its value
        return obj.value
    if isinstance(obj, np.bool_):  # numpy's bool is no int subclass, unlike Python's
        return bool(obj)
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
                    "(msgpack types, tuples, numpy arrays, LoadedContext and ContextCollection only)")


def _array_ext(array: np.ndarray[Any, Any]) -> msgpack.ExtType:
    """An ndarray as EXT_ARRAY: dtype descr, shape, order, then its bytes in that order. The join
    is the one copy for an array contiguous in its order (ravel is then a view; msgpack's ExtType
    takes bytes only); any other array is gathered into that order first."""
    if isinstance(array, np.ma.MaskedArray):
        raise TypeError("cannot send a masked array (its mask would be lost): send its .data and .mask")
    if array.dtype.hasobject:
        raise TypeError(f"cannot send an array of dtype {array.dtype} "
                        "(its items are references, not data: fixed-size dtypes only)")
    fortran = array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous
    spilling: _Spilling | None = getattr(_local, "spilling", None)
    if spilling is not None and spilling.over >= 0 and array.nbytes > spilling.over:  # arg_spill.py
        plan = spilling.plan
        if plan is None:  # made on the first spilled array: most requests have none
            plan = spilling.plan = ArgumentPlan(spilling.over)
        offset = plan.take(array, fortran)
        spilled = _pack([np.lib.format.dtype_to_descr(array.dtype), list(array.shape), fortran, offset])
        return msgpack.ExtType(EXT_SPILLED_ARRAY, spilled)
    header = _pack([np.lib.format.dtype_to_descr(array.dtype), list(array.shape), fortran])
    data = array.ravel(order="F" if fortran else "C").view(np.uint8).data if array.dtype.itemsize else b""
    return msgpack.ExtType(EXT_ARRAY, b"".join((ARRAY_HEADER_LEN.pack(len(header)), header, data)))


def _dtype_of(descr: Any) -> np.dtype[Any]:
    dtype: np.dtype[Any] = np.lib.format.descr_to_dtype(descr)
    if dtype.hasobject:
        raise TypeError(f"an encoded array of dtype {dtype} (objects) is refused")
    return dtype


def _spilled_array_from(payload: bytes, source: ArgumentSource | None,
                        unpack_header: Callable[[bytes], Any]) -> np.ndarray[Any, Any]:
    """The read-only ndarray an EXT_SPILLED_ARRAY names, a view of the request's argument
    allocation (no copy); its bounds are checked against the allocation."""
    descr, shape, fortran, offset = unpack_header(payload)  # a structured descr holds tuples
    view = source.memory if source is not None else None
    if view is None:
        raise TypeError("a spilled array argument outside a worker's request (no argument allocation)")
    dtype = _dtype_of(descr)
    shape = tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if not 0 <= offset <= len(view) - nbytes:
        raise ValueError(f"a spilled array of {nbytes} bytes at offset {offset} lies outside its "
                         f"allocation of {len(view)} bytes")
    order: Literal["C", "F"] = "F" if fortran else "C"
    array: np.ndarray[Any, Any] = np.ndarray(shape, dtype=dtype, buffer=view, offset=offset, order=order)
    array.flags.writeable = False  # the client's bytes: shared, and read by a requeued run too
    return array


def _array_from(payload: bytes, unpack_header: Callable[[bytes], Any]) -> np.ndarray[Any, Any]:
    """The ndarray an EXT_ARRAY payload describes, writable and of its own. The dtype is rebuilt
    from its descr (np.dtype of a str or of field tuples: no pickle, nothing imported); object
    dtypes and a byte count that does not match the shape are refused."""
    (header_len,) = ARRAY_HEADER_LEN.unpack_from(payload)
    start = ARRAY_HEADER_LEN.size + header_len
    descr, shape, fortran = unpack_header(payload[ARRAY_HEADER_LEN.size:start])
    dtype = _dtype_of(descr)
    shape = tuple(int(n) for n in shape)
    if math.prod(shape) * dtype.itemsize != len(payload) - start:
        raise ValueError(f"an encoded array of shape {shape} and dtype {dtype} has "
                         f"{len(payload) - start} bytes")
    order: Literal["C", "F"] = "F" if fortran else "C"
    view: np.ndarray[Any, Any] = np.ndarray(shape, dtype=dtype, buffer=payload, offset=start, order=order)
    owned: np.ndarray[Any, Any] = view.copy(order=order)  # the payload is read-only bytes; an array is its own
    return owned


def encode_request(job: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], *,
                   flags: RequestFlags = RequestFlags.NAMED, job_timeout: float | None = None) -> bytes:
    """The request's bytes; InvalidArgumentType (a TypeError) names an argument msgpack cannot carry."""
    if flags == RequestFlags.NAMED and job_timeout is None:
        request: list[Any] = [job, list(args), kwargs]  # the common case stays three elements
    else:
        request = [job, list(args), kwargs, int(flags), job_timeout]
    try:
        return _pack(request)
    except (TypeError, OverflowError):
        # Packed again one argument at a time only on this failure path, to say which one it was.
        _name_unsendable(args, kwargs, chunk=bool(flags & RequestFlags.CHUNK), single=bool(flags & RequestFlags.SINGLE))
        raise


def encode_spilling(job: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], spill_over: int, *,
                    flags: RequestFlags = RequestFlags.NAMED,
                    job_timeout: float | None = None) -> tuple[bytes, ArgumentPlan | None]:
    """:func:`encode_request`, leaving every array of more than ``spill_over`` bytes out of the
    request: (bytes, the plan listing them, or None when there was none; the module docstring)."""
    spilling: _Spilling | None = getattr(_local, "spilling", None)
    if spilling is None:
        spilling = _local.spilling = _Spilling()
    outer_over, outer_plan = spilling.over, spilling.plan  # a nested encode's (a signal handler's)
    spilling.over, spilling.plan = spill_over, None
    try:
        data = encode_request(job, args, kwargs, flags=flags, job_timeout=job_timeout)
        return data, spilling.plan
    finally:
        spilling.over, spilling.plan = outer_over, outer_plan


def decode_job(data: Buffer, resolve: Resolver | None = None, *, decode: "Decoder | None" = None) -> JobRequest:
    """The request in full; LoadedContext/ContextCollection arguments are resolved with
    ``resolve`` (the worker's own reader), as results are in the client. ``decode``: a
    :func:`decoder` made once for that ``resolve`` (the job path's, saving a closure a job)."""
    parts = decode(data) if decode is not None else _unpack(data, resolve)
    if len(parts) == 3:
        return JobRequest(parts[0], parts[1], parts[2])
    return JobRequest(*parts)


def request_header(data: Buffer) -> tuple[str, float | None]:
    """(job name, job_timeout) of a request, its arguments left undecoded: no array built, no
    layer resolved, and a spilled array (which only its worker can map) no obstacle. For the
    supervisor, which names in its errors a job it does not run."""
    parts = msgpack.unpackb(data, raw=False, ext_hook=_undecoded, strict_map_key=False)
    job_timeout = parts[4] if len(parts) > 4 else None
    return str(parts[0]), job_timeout


def _undecoded(code: int, payload: bytes) -> None:
    return None


def decode_request(data: Buffer, resolve: Resolver | None = None) -> tuple[str, list[Any], dict[str, Any]]:
    """The job name and arguments (see :func:`decode_job` for the whole request)."""
    job, args, kwargs, *_ = decode_job(data, resolve)
    return job, args, kwargs


def encode_result(value: Any, job: str = "?") -> bytes:
    """The result's bytes; InvalidArgumentType (a TypeError) naming ``job`` if msgpack cannot carry it."""
    return _pack_named(value, f"the result of job {job!r}")


def decode_result(data: Buffer, resolve: Resolver) -> Any:
    return _unpack(data, resolve)


Decoder = Callable[[Any], Any]


def decoder(resolve: Resolver | None = None, arguments: ArgumentSource | None = None) -> Decoder:
    """``data -> value``, resolving layer references with ``resolve``: made once by whoever
    decodes many messages with the same resolver (a worker, a client's Link). ``arguments``: a
    worker's, where spilled array arguments of the request being decoded lie."""
    unpackb, ext_type = msgpack.unpackb, msgpack.ExtType

    def ext_hook(code: int, payload: bytes) -> Any:
        if code == EXT_TUPLE:
            return tuple(unpackb(payload, raw=False, ext_hook=ext_hook, strict_map_key=False))
        if code == EXT_LAYER and resolve is not None:
            return resolve(*LAYER_REF.unpack(payload))
        if code == EXT_COLLECTION and resolve is not None:
            contexts, missing = unpackb(payload, raw=False, ext_hook=ext_hook)
            return ContextCollection(list(contexts), [MissingStep(*m) for m in missing])
        if code == EXT_ARRAY:
            return _array_from(payload, lambda header: unpackb(header, raw=False, ext_hook=ext_hook))
        if code == EXT_SPILLED_ARRAY:
            return _spilled_array_from(payload, arguments,
                                       lambda header: unpackb(header, raw=False, ext_hook=ext_hook))
        return ext_type(code, payload)

    def decode(data: Any) -> Any:
        return unpackb(data, raw=False, ext_hook=ext_hook, strict_map_key=False)

    return decode


_plain_decode = decoder(None)


def _unpack(data: Buffer, resolve: Resolver | None = None) -> Any:
    return (_plain_decode if resolve is None else decoder(resolve))(data)


def _packable(value: Any) -> Any:
    # Any Exception: packing runs the value's own code (a str subclass's __str__, an Enum's value).
    try:
        _pack(value)
    except Exception:
        return None
    return value


def _shown(show: Callable[[], str], what: str) -> str:
    """``show()``, or a note saying ``what`` could not be shown (its own code raised)."""
    try:
        text = show()
        if type(text) is str:
            return text
        raise TypeError(f"it gave a {type(text).__name__}, not a str")
    except Exception as refused:
        return f"<{what} could not be shown: {type(refused).__name__}>"


def encode_error(exc: BaseException) -> bytes:
    """A job's exception as the error wire format; never raises, whatever the exception's own
    code does (a worker encodes it in its handler of job failures: an error escaping there
    killed the worker, and the job, requeued, killed the next one too)."""
    fields = getattr(exc, "_fields", None) if isinstance(exc, ShmPoolError) else None
    cls = type(exc)
    payload = {
        "type": cls.__name__,
        "qualname": cls.__qualname__,
        "module": cls.__module__,
        "args": _packable(list(exc.args)),
        "message": _shown(lambda: str(exc), f"the message of a {cls.__name__}"),
        "fields": _packable(fields) if fields is not None else None,
        "traceback": _shown(lambda: "".join(traceback.format_exception(cls, exc, exc.__traceback__)),
                            f"the traceback of a {cls.__name__}"),
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
    rebuilt_type = isinstance(found, type) and (issubclass(found, Exception) or found in _BASE_EXCEPTIONS_REBUILT)
    if not (rebuilt_type and isinstance(args, list)):
        return None
    try:
        exc = found(*args)
    except Exception:  # a constructor that wants other arguments than its args: a JobError then
        return None
    return exc if isinstance(exc, found) else None
