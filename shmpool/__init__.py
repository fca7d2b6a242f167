"""shmpool: immutable data served to many processes at once through POSIX shared memory.

The user API is what ``__all__`` lists: ``Coordinator`` (the owning process), ``attach`` (a
zero-copy ``Reader`` from any process), ``connect`` (a ``concurrent.futures.Executor`` of the
instance's workers), their results and their errors. The allocation table and the instance's
segments are in :mod:`shmpool.lowlevel`.

The package has three layers, each a subpackage that imports only the ones before it:
``shmpool.substrate`` (segments, lock, allocator), ``shmpool.data`` (regions, generations,
readers) and ``shmpool.jobs`` (the job board and the client). ``shmpool.coordinator`` and
``shmpool.workers`` are the two process roles, and ``import shmpool`` loads neither: a reader
process runs no coordinator code.

``import shmpool`` imports none of the names below either: each loads its module on first use
(PEP 562 ``__getattr__``), so a process pays only for what it touches. Every worker, coordinator,
CLI command and client starts a Python process that imports shmpool: ``shmpool --help`` or a
worker must not import the client, the region builder or the sample data first. ``from shmpool
import X`` works as for any attribute; type checkers see the imports under ``TYPE_CHECKING``.

The library logs through loguru. Following loguru's guidance for libraries,
``logger.disable("shmpool")`` runs on import (or, if loguru is not imported yet, as soon as it
is: shmpool/substrate/_log.py), so a reader or a client process is silent; the
process that runs a Coordinator prints shmpool's WARNING and above on stderr unless
``show_warnings(False)`` or ``SHMPOOL_WARNINGS=0`` says not to (shmpool/_last_resort.py).
"""

from typing import TYPE_CHECKING, Any

from ._last_resort import show_warnings
from .substrate._log import when_loguru_imported

if TYPE_CHECKING:  # what __getattr__ below returns, for type checkers; not imported at run time
    from .coordinator import Coordinator, ProtoDimension
    from .data.context import ContextCollection, LoadedContext, MissingStep, NavigationPath
    from .data.reader import Reader, attach
    from .data.region_builder import RegionBuilder
    from .data.sample import SAMPLE, sample_dir
    from .data.snapshot import Snapshot
    from .errors import (
        AllocationFailed,
        AttachError,
        CleanupError,
        ClientClosed,
        CoordinatorStateError,
        DimensionEvicted,
        DimensionNotFound,
        DirectoryFull,
        GenerationNotNewer,
        GenerationTimeout,
        InstanceExists,
        InvalidArgument,
        InvalidArgumentType,
        InvalidHandle,
        InvalidJob,
        InvalidId,
        InvalidLayer,
        JobError,
        JobTimeout,
        LayerNotFound,
        LimitExceeded,
        LockTimeout,
        NotPicklable,
        OutOfBounds,
        RegionFormatError,
        EditConflict,
        ReaderClosed,
        ReaderForked,
        RemoteTraceback,
        ReloadTimeout,
        RequestTooLarge,
        ArgumentTooLarge,
        SharedMemoryFull,
        ShmPoolError,
        SnapshotClosed,
        SnapshotTimeout,
        UnknownJob,
        UnsafeRuntimeDir,
        UntrustedObject,
        MappedFileChanged,
        WorkerCrashed,
        WorkerInitFailed,
    )
    from .jobs.client import Client, JobFuture, connect
    from .jobs.worker_context import worker_reader
    from .substrate.ids import key_id
    from .substrate.instance import DEFAULT_POOLS, PoolSpec
    from .substrate.limits import DEFAULT_LIMIT, Thresholds
    from .substrate.names import cleanup

# Now if loguru is imported, else as its import finishes (shmpool/substrate/_log.py): shmpool does not
# import loguru itself until a process configures logging.
when_loguru_imported(lambda logger: logger.disable("shmpool"))

__version__ = "0.1.0"

# Where each lazily loaded name lives (the same names as the TYPE_CHECKING imports above;
# tests/test_process_start_imports.py checks that both lists and __all__ agree).
_HOMES: dict[str, tuple[str, ...]] = {
    ".coordinator": ("Coordinator", "ProtoDimension"),
    ".data.context": ("ContextCollection", "LoadedContext", "MissingStep", "NavigationPath"),
    ".data.reader": ("Reader", "attach"),
    ".data.region_builder": ("RegionBuilder",),
    ".data.sample": ("SAMPLE", "sample_dir"),
    ".data.snapshot": ("Snapshot",),
    ".errors": ("AllocationFailed", "AttachError", "CleanupError", "ClientClosed", "CoordinatorStateError",
                "DimensionEvicted", "DimensionNotFound", "DirectoryFull", "GenerationNotNewer", "GenerationTimeout",
                "InstanceExists", "InvalidArgument", "InvalidArgumentType", "InvalidHandle", "InvalidJob", "InvalidId",
                "InvalidLayer", "JobError", "JobTimeout", "LayerNotFound", "LimitExceeded", "LockTimeout", "NotPicklable",
                "OutOfBounds", "RegionFormatError", "EditConflict", "ReaderClosed", "ReaderForked", "RemoteTraceback",
                "ReloadTimeout", "RequestTooLarge", "ArgumentTooLarge", "SharedMemoryFull", "ShmPoolError",
                "SnapshotClosed", "SnapshotTimeout", "UnknownJob", "UnsafeRuntimeDir", "UntrustedObject",
                "MappedFileChanged", "WorkerCrashed", "WorkerInitFailed"),
    ".jobs.client": ("Client", "JobFuture", "connect"),
    ".jobs.worker_context": ("worker_reader",),
    ".substrate.ids": ("key_id",),
    ".substrate.instance": ("DEFAULT_POOLS", "PoolSpec"),
    ".substrate.limits": ("DEFAULT_LIMIT", "Thresholds"),
    ".substrate.names": ("cleanup",),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}
# Subpackages that an eager `import shmpool` used to load as a side effect: `shmpool.errors.X`
# after a bare `import shmpool` keeps working.
_SUBMODULES = ("errors", "lowlevel", "substrate", "data", "jobs")


def __getattr__(name: str) -> Any:
    # PEP 562: called only for a name not yet in the module's namespace. The value is stored
    # there, so each name costs one import and later lookups are plain attribute reads.
    import importlib
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # the import binds it here too
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'shmpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))


__all__ = [
    "Coordinator",
    "ProtoDimension",
    "AllocationFailed",
    "AttachError",
    "CleanupError",
    "Client",
    "ClientClosed",
    "ContextCollection",
    "CoordinatorStateError",
    "JobFuture",
    "LoadedContext",
    "MissingStep",
    "NavigationPath",
    "Reader",
    "RequestTooLarge",
    "ArgumentTooLarge",
    "SAMPLE",
    "WorkerCrashed",
    "attach",
    "connect",
    "DEFAULT_LIMIT",
    "DEFAULT_POOLS",
    "DimensionEvicted",
    "DimensionNotFound",
    "DirectoryFull",
    "GenerationNotNewer",
    "GenerationTimeout",
    "InstanceExists",
    "InvalidArgument",
    "InvalidArgumentType",
    "InvalidHandle",
    "InvalidJob",
    "InvalidId",
    "InvalidLayer",
    "JobError",
    "JobTimeout",
    "LayerNotFound",
    "LimitExceeded",
    "LockTimeout",
    "NotPicklable",
    "OutOfBounds",
    "PoolSpec",
    "RegionFormatError",
    "EditConflict",
    "ReaderClosed",
    "RegionBuilder",
    "ReaderForked",
    "ReloadTimeout",
    "RemoteTraceback",
    "SharedMemoryFull",
    "ShmPoolError",
    "Snapshot",
    "SnapshotClosed",
    "SnapshotTimeout",
    "Thresholds",
    "UnknownJob",
    "UnsafeRuntimeDir",
    "UntrustedObject",
    "MappedFileChanged",
    "WorkerInitFailed",
    "cleanup",
    "key_id",
    "sample_dir",
    "show_warnings",
    "worker_reader",
]
