"""Every failure a caller can cause, as one typed hierarchy rooted at :class:`ShmPoolError`.

Each exception keeps the offending values as attributes *and* in its message, and pickles
cleanly (its constructor keywords are replayed), so an error raised in a worker process reaches
the submitting process intact.
"""

from __future__ import annotations

import os
import pwd
from enum import Enum
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "ShmPoolError",
    "AllocationFailed",
    "AllocationFailure",
    "LimitExceeded",
    "SharedMemoryFull",
    "InvalidHandle",
    "LayerNotFound",
    "DimensionNotFound",
    "OutOfBounds",
    "RegionFormatError",
    "EditConflict",
    "AttachError",
    "UntrustedObject",
    "UnsafeRuntimeDir",
    "InstanceExists",
    "LockTimeout",
    "ReaderForked",
    "InvalidLayer",
    "RequestTooLarge",
    "ArgumentTooLarge",
    "JobError",
    "JobTimeout",
    "RemoteTraceback",
    "ClientClosed",
    "InvalidArgument",
    "InvalidArgumentType",
    "NotPicklable",
    "CoordinatorStateError",
    "GenerationNotNewer",
    "WorkerInitFailed",
    "WorkerStartFailed",
    "WorkersNotReady",
    "NotInWorker",
    "RegionClosed",
    "PlatformUnsupported",
    "UnknownJob",
    "InvalidJob",
    "WorkerCrashed",
    "DirectoryFull",
    "ReloadTimeout",
    "ReaderClosed",
    "CleanupError",
    "InvalidId",
    "SnapshotTimeout",
    "SnapshotClosed",
    "DimensionEvicted",
    "GenerationTimeout",
    "MappedFileChanged",
]


def _rebuild(cls: "Callable[..., ShmPoolError]", kwargs: dict[str, Any]) -> "ShmPoolError":
    return cls(**kwargs)  # every subclass takes its fields as keywords


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return f"uid {uid}"


def _preview(values: Iterable[Any], most: int = 12) -> str:
    items = list(values)
    shown = ", ".join(str(v) for v in items[:most])
    return shown + (f", ... ({len(items)} in all)" if len(items) > most else "")


class ShmPoolError(Exception):
    """Root of every error shmpool raises on purpose."""

    # Each subclass declares the attributes its ``fields`` set (below, in its body), so that
    # type checkers, ours and users', know ``exc.layer_id`` and its type.
    def __init__(self, text: str, /, **fields: Any) -> None:
        super().__init__(text)
        self._fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self._fields)


class AllocationFailure(str, Enum):
    """Why an allocation failed, for code that decides what to do next (``AllocationFailed.kind``).

    A str enum, so it pickles by value and compares equal to its text."""
    NO_ROOM = "no_room"              # no free run long enough now: freeing or evicting may help
    TOO_LARGE = "too_large"          # larger than any pool could ever hold: nothing will help
    INVALID_SIZE = "invalid_size"    # not a positive integer
    TABLE_FULL = "table_full"        # every allocation record is taken
    SHM_FULL = "shm_full"            # /dev/shm cannot back the pages (SharedMemoryFull)


class AllocationFailed(ShmPoolError):
    """No pool has a contiguous run of free blocks large enough for the request.

    ``kind`` (an :class:`AllocationFailure`) says whether making room could help; ``reason`` is
    the same in words."""

    nbytes: int
    reason: str
    pools: tuple[str, ...]
    kind: AllocationFailure

    def __init__(self, *, nbytes: int, reason: str, pools: Sequence[str] = (),
                 kind: AllocationFailure = AllocationFailure.NO_ROOM) -> None:
        detail = f" (pools: {'; '.join(pools)})" if pools else ""
        if AllocationFailure(kind) is AllocationFailure.TOO_LARGE:
            # The one remedy is a setting: say which (the default pools grow with memory_limit).
            detail += ("; the `pools` setting needs a PoolSpec(block_size, block_count) holding it whole "
                       "(Coordinator(pools=...) without it derives pools from memory_limit)")
        super().__init__(
            f"cannot allocate {nbytes} bytes: {reason}{detail}",
            nbytes=nbytes, reason=reason, pools=tuple(pools), kind=AllocationFailure(kind),
        )


class SharedMemoryFull(AllocationFailed):
    """The shared-memory filesystem (``/dev/shm``) has no room for pages that must be reserved.

    Raised by an allocation whose blocks were never backed by pages yet, and by start-up when a
    segment that is reserved whole (control, job board) or a semaphore does not fit. An
    AllocationFailed, so callers that make room on a full pool (eviction) make room here too.
    """

    what: str
    filesystem: str
    size: int
    free: int
    advice: str

    def __init__(self, *, nbytes: int, what: str, filesystem: str, size: int, free: int,
                 advice: str = "lower the memory limit (--memory-limit)") -> None:
        # ``advice``: what shrinks this object; the memory limit bounds the pools, not the job board.
        reason = (f"the shared-memory filesystem {filesystem} has no room for {what} ({free} of {size} "
                  f"bytes free); give it more room (docker run --shm-size) or {advice}")
        ShmPoolError.__init__(self, f"cannot allocate {nbytes} bytes: {reason}", nbytes=nbytes, what=what,
                              filesystem=filesystem, size=size, free=free, advice=advice)
        self.reason = reason
        self.pools = ()
        self.kind = AllocationFailure.SHM_FULL


class LimitExceeded(ShmPoolError):
    """The allocation would push usage past the refusal threshold of the memory limit."""

    requested: int
    used: int
    limit: int
    refuse_at: int

    def __init__(self, *, requested: int, used: int, limit: int, refuse_at: int) -> None:
        super().__init__(
            f"allocation of {requested} bytes refused: {used} of {limit} bytes in use, "
            f"allocations may not pass {refuse_at} bytes ({refuse_at / limit:.0%} of the limit); free "
            f"room or raise the memory_limit setting (--memory-limit)",
            requested=requested, used=used, limit=limit, refuse_at=refuse_at,
        )


class InvalidHandle(ShmPoolError):
    """A handle given to ``free`` is not a live allocation of this table (double free, foreign)."""

    handle: Any
    reason: str

    def __init__(self, *, handle: Any, reason: str) -> None:
        super().__init__(f"invalid allocation handle {handle!r}: {reason}", handle=handle, reason=reason)


class LayerNotFound(ShmPoolError, LookupError):
    """The dimension exists but holds no layer with that id.

    ``layer_id`` is the id asked for, or the repr of the str key asked for (Reader.get).
    """

    dimension_id: int
    layer_id: int | str
    generation: int
    layer_count: int
    sample_ids: tuple[int, ...]

    def __init__(self, *, dimension_id: int, layer_id: int | str, generation: int = 0,
                 layer_count: int = 0, sample_ids: Sequence[int] = ()) -> None:
        # The message waits for __str__: a miss is how a caller asks "is it there?" (try the
        # lookup, catch this), and formatting it here was ~4 of the miss's ~5 us
        # (scripts/bench_keys.py absent_key_ns). ``args`` stays empty, as the message is not one.
        Exception.__init__(self)
        fields = self._fields = {"dimension_id": dimension_id, "layer_id": layer_id, "generation": generation,
                                 "layer_count": layer_count, "sample_ids": tuple(sample_ids)}
        self.dimension_id, self.layer_id, self.generation = dimension_id, layer_id, generation
        self.layer_count, self.sample_ids = layer_count, fields["sample_ids"]

    def __str__(self) -> str:
        known = f"; layer ids include {_preview(self.sample_ids)}" if self.sample_ids else ""
        return (f"layer {self.layer_id} not found in dimension {self.dimension_id} "
                f"(generation {self.generation}, {self.layer_count} layers{known})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class DimensionNotFound(ShmPoolError, LookupError):
    """No dimension with that id is published.

    Asked by name (Reader.dimension_id), ``dimension_id`` is the name's repr and ``available``
    lists the published dimensions as "'name' (id)" strings.
    """

    dimension_id: int | str
    available: tuple[int, ...] | tuple[str, ...]

    def __init__(self, *, dimension_id: int | str, available: Sequence[int] | Sequence[str] = ()) -> None:
        super().__init__(
            f"dimension {dimension_id} not found (available: {_preview(sorted(available)) or 'none'})",
            dimension_id=dimension_id, available=tuple(available),
        )


class OutOfBounds(ShmPoolError, IndexError):
    """An offset/length pair reaches outside the memory it must stay within."""

    what: str
    offset: int
    length: int
    limit: int

    def __init__(self, *, what: str, offset: int, length: int, limit: int) -> None:
        super().__init__(
            f"{what}: bytes [{offset}, {offset + length}) fall outside [0, {limit})",
            what=what, offset=offset, length=length, limit=limit,
        )


class RegionFormatError(ShmPoolError, ValueError):
    """A region file (or region bytes in shared memory) is malformed; names the source and the fault."""

    source: str
    fault: str
    offset: int | None

    def __init__(self, *, source: str, fault: str, offset: int | None = None) -> None:
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{source}: {fault}{where}", source=source, fault=fault, offset=offset)


class AttachError(ShmPoolError):
    """The named instance cannot be attached to (not running, gone, or incompatible)."""

    name: str
    reason: str

    def __init__(self, *, name: str, reason: str) -> None:
        super().__init__(f"cannot attach to shmpool instance {name!r}: {reason}", name=name, reason=reason)


class ReaderClosed(AttachError):
    """A lookup on a Reader after its ``close()``. Contexts it made earlier stay readable."""

    slot: int

    def __init__(self, *, name: str, slot: int) -> None:
        ShmPoolError.__init__(self, f"reader (slot {slot}) of shmpool instance {name!r} is closed: no new "
                                    f"lookups; contexts it returned stay valid while held",
                              name=name, slot=slot)
        self.reason = "this reader is closed"  # as an AttachError has


class ReaderForked(AttachError):
    """A Reader inherited through ``fork()`` whose row could not be handed over to the child.

    The child normally gets a reader row of its own at fork (docs/usage.md, "Processes and
    fork"); when it could not (the table lock stayed taken, every row was in use, or the child
    ran too late to take the row over), the inherited Reader refuses lookups with this error,
    and the contexts and snapshots inherited with it are not protected any more: attach again."""

    def __init__(self, *, name: str, pid: int, parent_pid: int, reason: str) -> None:
        ShmPoolError.__init__(self, f"reader of shmpool instance {name!r} was inherited through fork() by pid "
                                    f"{pid} (parent pid {parent_pid}) and has no reader row of its own: "
                                    f"{reason}; call shmpool.attach() again in this process, and do not use "
                                    f"contexts or snapshots inherited from the parent",
                              name=name, pid=pid, parent_pid=parent_pid, reason=reason)


class UntrustedObject(AttachError):
    """A shared object of the instance belongs to another user, or grants group/others access.

    Nothing of it is mapped or used: another user may have created the name first to serve
    their data to our readers or to take our jobs.
    """

    path: str
    owner_uid: int
    mode: int
    kind: str
    expected_uid: int
    owner: str

    def __init__(self, *, name: str, path: str, owner_uid: int, mode: int, kind: str = "file",
                 expected_uid: int | None = None) -> None:
        me = os.geteuid() if expected_uid is None else expected_uid
        owner = _user(owner_uid)
        if owner_uid != me:
            why = (f"{path} belongs to {owner} (uid {owner_uid}), not to {_user(me)} (uid {me}): "
                   f"another user holds this instance name")
        elif kind != "file":
            why = f"{path} is a {kind}, not a shared-memory object"
        else:
            why = f"{path} is ours but has mode {mode:04o}: group or others may read or write it"
        reason = f"{why}; refusing to trust it"
        ShmPoolError.__init__(self, f"cannot attach to shmpool instance {name!r}: {reason}", name=name,
                              path=path, owner_uid=owner_uid, mode=mode, kind=kind, expected_uid=me)
        self.reason = reason
        self.owner = owner


class UnsafeRuntimeDir(ShmPoolError, PermissionError):
    """The runtime folder is not ours alone (another owner, group/other write bits, a symlink)."""

    path: str
    owner_uid: int
    mode: int
    reason: str
    owner: str

    def __init__(self, *, path: str, owner_uid: int, mode: int, reason: str) -> None:
        super().__init__(f"unsafe shmpool runtime folder {path} (owner {_user(owner_uid)}, uid {owner_uid}, "
                         f"mode {mode:04o}): {reason}; remove it or fix it (chown, chmod 700), or point "
                         "SHMPOOL_RUNTIME_DIR at a folder of your own",
                         path=path, owner_uid=owner_uid, mode=mode, reason=reason)
        self.owner = _user(owner_uid)


class InstanceExists(ShmPoolError):
    """Another live coordinator already owns this instance name."""

    name: str
    owner_pid: int | None
    reason: str

    def __init__(self, *, name: str, owner_pid: int | None = None, reason: str = "") -> None:
        owner = f" (owner pid {owner_pid})" if owner_pid else ""
        detail = f": {reason}" if reason else ""
        super().__init__(f"shmpool instance {name!r} is already running{owner}{detail}", name=name,
                         owner_pid=owner_pid, reason=reason)


class LockTimeout(ShmPoolError, TimeoutError):
    """A shared lock stayed held by a live process for longer than the caller allowed."""

    lock: str
    owner_pid: int
    waited: float

    def __init__(self, *, lock: str, owner_pid: int, waited: float) -> None:
        holder = f"pid {owner_pid}" if owner_pid else "a process that has not recorded its pid yet"
        super().__init__(
            f"lock {lock!r} still held by {holder} after {waited:.3f} s (stopped or wedged?)",
            lock=lock, owner_pid=owner_pid, waited=waited,
        )


class InvalidLayer(ShmPoolError, ValueError):
    """A layer given to a builder or proto-dimension is unacceptable (bad id, duplicate, bad keyword)."""

    dimension_id: int
    layer_id: Any
    reason: str

    def __init__(self, *, dimension_id: int, layer_id: Any, reason: str) -> None:
        super().__init__(
            f"layer {layer_id!r} of dimension {dimension_id}: {reason}",
            dimension_id=dimension_id, layer_id=layer_id, reason=reason,
        )


class EditConflict(ShmPoolError):
    """An edit of a dimension was started from a generation that is no longer the published one."""

    dimension_id: int
    base_generation: int
    current_generation: int | None

    def __init__(self, *, dimension_id: int, base_generation: int, current_generation: int | None) -> None:
        now = "is not published" if current_generation is None else f"is at generation {current_generation}"
        super().__init__(
            f"edit of dimension {dimension_id} started from generation {base_generation}, but the dimension "
            f"{now}: crystallizing it would drop the changes published since; start a new edit_dimension",
            dimension_id=dimension_id, base_generation=base_generation, current_generation=current_generation,
        )


class RequestTooLarge(ShmPoolError, ValueError):
    """A job's encoded arguments do not fit in a slot's request area."""

    nbytes: int
    capacity: int
    job: str

    def __init__(self, *, nbytes: int, capacity: int, job: str = "") -> None:
        super().__init__(f"request for job {job!r} is {nbytes} bytes; a slot holds at most {capacity}",
                         nbytes=nbytes, capacity=capacity, job=job)


class ArgumentTooLarge(RequestTooLarge):
    """A job's array argument too large for a slot could not be placed in shared memory either
    (its spill allocation was refused: the memory limit, or no pool with room); the allocator's
    error is chained as ``__cause__``."""

    argument: str
    reason: str

    def __init__(self, *, argument: str, nbytes: int, job: str = "", reason: str = "", capacity: int = 0) -> None:
        ShmPoolError.__init__(self, f"argument {argument} of job {job!r} ({nbytes} bytes of arrays) cannot be "
                              f"placed in shared memory: {reason}", argument=argument, nbytes=nbytes, job=job,
                              reason=reason, capacity=capacity)


class JobError(ShmPoolError):
    """A job raised an exception in its worker; carries the remote type, message and traceback."""

    job: str
    error_type: str
    message: str
    remote_traceback: str

    def __init__(self, *, job: str, error_type: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"job {job!r} failed in its worker: {error_type}: {message}",
                         job=job, error_type=error_type, message=message, remote_traceback=remote_traceback)


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, chained as the rebuilt one's ``__cause__``.

    Not raised on its own: it makes the worker's frames part of the traceback Python prints, as
    concurrent.futures.process does. ``traceback`` holds the text.
    """

    def __init__(self, traceback: str) -> None:
        super().__init__(traceback)
        self.traceback = traceback

    def __str__(self) -> str:
        return f'\n"""\n{self.traceback}"""'


class JobTimeout(ShmPoolError, TimeoutError):
    """A job ran longer than its ``job_timeout``: its worker was killed (SIGKILL) and replaced."""

    job: str
    timeout: float
    worker_pid: int

    def __init__(self, *, job: str, timeout: float, worker_pid: int = 0) -> None:
        worker = f" (pid {worker_pid})" if worker_pid else ""
        super().__init__(f"job {job!r} ran past its job_timeout of {timeout:g} s; its worker{worker} was "
                         "killed and replaced", job=job, timeout=timeout, worker_pid=worker_pid)


class ClientClosed(AttachError, RuntimeError):
    """A Client used after ``shutdown()`` or ``close()`` (a RuntimeError, as concurrent.futures raises)."""

    def __init__(self, *, name: str, reason: str = "it was shut down") -> None:
        ShmPoolError.__init__(self, f"client of shmpool instance {name!r} is closed ({reason}): it takes no new "
                                    "jobs; connect again for more", name=name, reason=reason)


class InvalidArgument(ShmPoolError, ValueError):
    """An argument is out of its range: ``chunksize=0``, ``job_timeout=-1``, a pool block size
    that is not a power of two, an instance name with a slash, a buffer too small, ..."""

    argument: str
    value: Any
    reason: str

    def __init__(self, *, argument: str, value: Any, reason: str) -> None:
        super().__init__(f"{argument}={value!r}: {reason}", argument=argument, value=value, reason=reason)


class InvalidArgumentType(ShmPoolError, TypeError):
    """An argument is of a type that cannot be used: a dimension name that is not a str, a
    read-only or non-contiguous buffer to write into, a navigation step that is not a pair."""

    def __init__(self, *, argument: str, value: Any, reason: str) -> None:
        super().__init__(f"{argument}={value!r}: {reason}", argument=argument, value=value, reason=reason)


class NotPicklable(ShmPoolError, TypeError):
    """A process-local object (a context, a batch, a reader, a snapshot, a client) was pickled or
    copied: it holds this process's mappings of shared memory, which no copy can share. ``hint``
    says what to send instead."""

    what: str
    hint: str

    def __init__(self, *, what: str, hint: str) -> None:
        super().__init__(f"a {what} cannot be pickled or copied: it holds this process's mappings of shared "
                         f"memory; {hint}", what=what, hint=hint)


class CoordinatorStateError(ShmPoolError, RuntimeError):
    """A Coordinator used in the wrong state: ``start()`` of a running one, or a method that needs
    shared memory before ``start()`` or after ``stop()``. ``running`` is the state it was in."""

    def __init__(self, *, name: str, running: bool) -> None:
        state = "is already started" if running else "is not running (call start(), or use it in a `with`)"
        super().__init__(f"coordinator {name!r} {state}", name=name, running=running)


class WorkerInitFailed(ShmPoolError):
    """A worker's initializer (``Coordinator(worker_init=...)``) raised: the worker exited before serving."""

    index: int
    pid: int
    initializer: str
    error: str

    def __init__(self, *, index: int, pid: int, initializer: str, error: str) -> None:
        super().__init__(f"worker {index} (pid {pid}): its initializer {initializer} failed: {error}",
                         index=index, pid=pid, initializer=initializer, error=error)


class WorkerStartFailed(ShmPoolError):
    """A worker died before it served (other than by its initializer: that is WorkerInitFailed)."""

    index: int
    pid: int
    reason: str

    def __init__(self, *, index: int, pid: int, reason: str) -> None:
        super().__init__(f"worker {index} (pid {pid}) failed to start: {reason}", index=index, pid=pid,
                         reason=reason)


class WorkersNotReady(ShmPoolError, TimeoutError):
    """The workers did not all report serving within the start-up timeout."""

    name: str
    timeout: float
    ready: int
    count: int

    def __init__(self, *, name: str, timeout: float, ready: int, count: int) -> None:
        super().__init__(f"workers of {name!r} not ready after {timeout:g} s ({ready} of {count} serving)",
                         name=name, timeout=timeout, ready=ready, count=count)


class NotInWorker(ShmPoolError, RuntimeError):
    """A worker-only call (``shmpool.worker_reader()``) made in a process that is not a worker."""

    call: str

    def __init__(self, *, call: str) -> None:
        super().__init__(f"{call} is for jobs running in a shmpool worker; this process is not one (use "
                         "shmpool.attach(name) or client.reader here)", call=call)


class RegionClosed(ShmPoolError, ValueError):
    """A Region used after ``close()`` (a ValueError, as I/O on a closed file raises)."""

    source: str

    def __init__(self, *, source: str) -> None:
        super().__init__(f"{source}: region is closed", source=source)


class PlatformUnsupported(ShmPoolError, OSError):
    """This platform lacks something shmpool needs (``shmpool.substrate.platform.check_system``).

    ``capability`` names it (``"timed semaphore waits"``, ``"/dev/shm"``, ...), ``reason`` says
    what was found and what to do."""

    capability: str
    reason: str

    def __init__(self, *, capability: str, reason: str) -> None:
        ShmPoolError.__init__(self, f"this platform cannot serve shmpool: {capability}: {reason}",
                              capability=capability, reason=reason)


class UnknownJob(ShmPoolError, LookupError):
    """The job name is not a built-in and not on the coordinator's allow-list (or cannot be found)."""

    job: str
    reason: str

    def __init__(self, *, job: str, reason: str) -> None:
        super().__init__(f"unknown job {job!r}: {reason}", job=job, reason=reason)


class InvalidJob(ShmPoolError, ValueError):
    """A job (an allow-list entry, or a callable given to ``submit``) cannot be named in a worker.

    ``job`` is empty when the entry is a ``job_modules`` prefix; ``use`` says what was refused
    (``"allowed"`` for an allow-list entry, ``"sent to a worker"`` for a submitted callable)."""

    job: str
    target: str
    reason: str
    use: str

    def __init__(self, *, job: str, target: str, reason: str, use: str = "allowed") -> None:
        what = f"job {job!r} ({target})" if job else f"job module prefix {target!r}"
        super().__init__(f"{what} cannot be {use}: {reason}", job=job, target=target, reason=reason, use=use)


class WorkerCrashed(ShmPoolError):
    """A job's worker died while running it, as many times as allowed; it is not retried again."""

    job: str
    attempts: int
    detail: str

    def __init__(self, *, job: str, attempts: int, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(f"job {job!r} killed its worker {attempts} times{extra}; not retried",
                         job=job, attempts=attempts, detail=detail)


class DirectoryFull(ShmPoolError, OverflowError):
    """Every entry of the dimension directory is taken; raise ``max_dimensions`` to hold more."""

    dimension_id: int
    capacity: int

    def __init__(self, *, dimension_id: int, capacity: int) -> None:
        super().__init__(f"cannot add dimension {dimension_id}: the dimension directory is full "
                         f"({capacity} entries; raise max_dimensions)",
                         dimension_id=dimension_id, capacity=capacity)


class GenerationNotNewer(ShmPoolError, ValueError):
    """An explicit generation was asked for that does not exceed the dimension's current one.

    Generations only increase (readers rely on it); a cluster that publishes the same content
    under one generation on every host (shmpool.dask) asks for the next one it agreed on.
    """

    dimension_id: int
    generation: int
    current: int

    def __init__(self, *, dimension_id: int, generation: int, current: int) -> None:
        super().__init__(f"cannot publish dimension {dimension_id} as generation {generation}: it is "
                         f"already at generation {current}, and generations only increase",
                         dimension_id=dimension_id, generation=generation, current=current)


class ReloadTimeout(ShmPoolError, TimeoutError):
    """A lookup found its dimension evicted and the coordinator did not reload it in time."""

    dimension_id: int
    generation: int
    waited: float

    def __init__(self, *, dimension_id: int, generation: int, waited: float) -> None:
        super().__init__(f"dimension {dimension_id} is evicted (generation {generation}) and was not "
                         f"reloaded within {waited:.1f} s; is its coordinator overloaded or its file gone?",
                         dimension_id=dimension_id, generation=generation, waited=waited)


class CleanupError(ShmPoolError, PermissionError):
    """``cleanup(NAME)`` could not remove some objects (usually: another user's); the rest are gone.

    ``failed`` holds (object name, reason) pairs, ``removed`` the names that were unlinked.
    """

    name: str
    failed: tuple[tuple[str, str], ...]
    removed: tuple[str, ...]

    def __init__(self, *, name: str, failed: Sequence[Sequence[str]], removed: Sequence[str] = ()) -> None:
        failed = tuple((str(obj), str(reason)) for obj, reason in failed)
        what = ", ".join(f"{obj} ({reason})" for obj, reason in failed)
        super().__init__(f"cannot remove {len(failed)} object{'s' * (len(failed) != 1)} of instance {name!r}: "
                         f"{what}", name=name, failed=failed, removed=tuple(removed))


class InvalidId(ShmPoolError, TypeError):
    """A dimension or layer id is not an integer (a bool or a float is refused, not rounded).

    ``argument`` names the parameter (``dimension_id``, ``layer_id``), ``value`` is what was given.
    """

    argument: str
    value: Any
    where: str

    def __init__(self, *, argument: str, value: Any, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        kinds = "an int (numpy integers are accepted) or a str key" if argument == "layer_id" else \
            "an int (numpy integers are accepted)"
        super().__init__(f"{prefix}{argument} must be {kinds}, not {type(value).__name__} {value!r}",
                         argument=argument, value=value, where=where)


class SnapshotTimeout(ShmPoolError, TimeoutError):
    """No consistent instant of the directory could be read in time: a multi-dimension publish
    kept W.PUBLISH_SEQ odd (its coordinator is slow, or died between its stores).

    ``sequence`` is the value last read, ``coordinator_alive`` says which of the two it is."""

    name: str
    sequence: int
    waited: float
    coordinator_alive: bool

    def __init__(self, *, name: str, sequence: int, waited: float, coordinator_alive: bool) -> None:
        why = ("a multi-dimension publish is still in progress" if coordinator_alive else
               "its coordinator died in the middle of a multi-dimension publish; the instance must be restarted")
        super().__init__(f"no consistent snapshot of instance {name!r} within {waited:.3f} s (publish "
                         f"sequence {sequence}): {why}", name=name, sequence=sequence, waited=waited,
                         coordinator_alive=coordinator_alive)


class SnapshotClosed(ShmPoolError, RuntimeError):
    """A lookup through a snapshot after it was closed (its generations are no longer held)."""

    name: str
    sequence: int

    def __init__(self, *, name: str, sequence: int) -> None:
        super().__init__(f"snapshot of instance {name!r} at publish sequence {sequence} is closed; "
                         "take a new one", name=name, sequence=sequence)


class DimensionEvicted(ShmPoolError, LookupError):
    """A snapshot's dimension was evicted at its instant: that generation has no region to read.

    Outside a snapshot a lookup reloads it (a newer generation); read it once, then snapshot again."""

    dimension_id: int
    generation: int

    def __init__(self, *, dimension_id: int, generation: int) -> None:
        super().__init__(f"dimension {dimension_id} was evicted at this snapshot's instant (generation "
                         f"{generation} has no region); look it up outside the snapshot to reload it, "
                         "then take a new snapshot", dimension_id=dimension_id, generation=generation)


class GenerationTimeout(ShmPoolError, TimeoutError):
    """``wait_generation`` saw no generation newer than ``after`` within ``timeout`` seconds."""

    dimension_id: int
    after: int
    generation: int
    timeout: float

    def __init__(self, *, dimension_id: int, after: int, generation: int, timeout: float) -> None:
        super().__init__(f"dimension {dimension_id} published no generation after {after} within "
                         f"{timeout:g} s (it is at generation {generation})", dimension_id=dimension_id,
                         after=after, generation=generation, timeout=timeout)


class MappedFileChanged(AttachError):
    """A region file the instance serves by mapping is not, or no longer, the file it published.

    Nothing of it is mapped: it was replaced, truncated, made writable or given to another owner
    since the coordinator published it (docs/architecture.md, "Start-up"). Only a process of the
    instance's own user (or root) can do that; the coordinator's next start copies it afresh.
    """

    path: str

    def __init__(self, *, name: str, path: str, reason: str) -> None:
        ShmPoolError.__init__(self, f"cannot attach to shmpool instance {name!r}: mapped region file {path} "
                                    f"{reason}; refusing to map it", name=name, path=path, reason=reason)
        self.reason = reason
