"""shmpool: immutable data served to many processes at once through POSIX shared memory.

The user API is what ``__all__`` lists: ``Coordinator`` (the owning process), ``attach`` (a
zero-copy ``Reader`` from any process), ``connect`` (a ``concurrent.futures.Executor`` of the
instance's workers), their results and their errors. The allocation table and the instance's
segments are in :mod:`shmpool.lowlevel`.

The package has three layers, each a subpackage that imports only the ones before it:
``shmpool.substrate`` (segments, lock, allocator), ``shmpool.data`` (regions, generations,
readers) and ``shmpool.jobs`` (the job board and the client). ``shmpool.coordinator`` and
``shmpool.workers`` are the two process roles, and ``import shmpool`` loads neither: a reader
process runs no coordinator code (``Coordinator`` is imported on first use).

The library logs through loguru. Following loguru's guidance for libraries,
``logger.disable("shmpool")`` runs on import, so a reader or a client process is silent; the
process that runs a Coordinator prints shmpool's WARNING and above on stderr unless
``show_warnings(False)`` or ``SHMPOOL_WARNINGS=0`` says not to (shmpool/_last_resort.py).
"""

from typing import TYPE_CHECKING, Any

from loguru import logger

from ._last_resort import show_warnings
from .jobs.client import Client, JobFuture, connect
from .data.context import ContextCollection, LoadedContext, MissingStep, NavigationPath
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
    WorkerCrashed,
    WorkerInitFailed,
)
from .substrate.instance import DEFAULT_POOLS, PoolSpec
from .substrate.limits import DEFAULT_LIMIT, Thresholds
from .substrate.ids import key_id
from .substrate.names import cleanup
from .data.reader import Reader, attach
from .data.region_builder import RegionBuilder
from .data.sample import SAMPLE, sample_dir
from .data.snapshot import Snapshot
from .jobs.worker_context import worker_reader

if TYPE_CHECKING:  # what __getattr__ below returns, for type checkers; not imported at run time
    from .coordinator import Coordinator, ProtoDimension

logger.disable("shmpool")

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # PEP 562: the coordinator's code loads only when a program asks for it, so a reader or a
    # client process that imports shmpool never imports shmpool.coordinator.
    if name in ("Coordinator", "ProtoDimension"):
        from . import coordinator
        return getattr(coordinator, name)
    raise AttributeError(f"module 'shmpool' has no attribute {name!r}")


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
    "WorkerInitFailed",
    "cleanup",
    "key_id",
    "sample_dir",
    "show_warnings",
    "worker_reader",
]
