"""shmpool: immutable data served to many processes at once through POSIX shared memory.

The library logs through loguru but stays silent until the application asks: following loguru's
guidance for libraries, ``logger.disable("shmpool")`` runs on import and the CLI (or the user)
calls ``logger.enable("shmpool")``.
"""

from loguru import logger

from .alloc import AllocationTable, Handle
from .client import Client, JobFuture, connect
from .context import ContextCollection, LoadedContext, MissingStep, NavigationPath
from .errors import (
    AllocationFailed,
    AttachError,
    CleanupError,
    ClientClosed,
    DimensionEvicted,
    DimensionNotFound,
    DirectoryFull,
    GenerationTimeout,
    InstanceExists,
    InvalidArgument,
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
    ReaderClosed,
    RemoteTraceback,
    ReloadTimeout,
    RequestTooLarge,
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
from .instance import DEFAULT_POOLS, PoolSpec, SharedInstance
from .limits import DEFAULT_LIMIT, Thresholds
from .names import cleanup
from .reader import Reader, attach
from .snapshot import Snapshot
from .worker_context import worker_reader

logger.disable("shmpool")

__version__ = "0.1.0"

__all__ = [
    "AllocationFailed",
    "AllocationTable",
    "AttachError",
    "CleanupError",
    "Client",
    "ClientClosed",
    "ContextCollection",
    "JobFuture",
    "LoadedContext",
    "MissingStep",
    "NavigationPath",
    "Reader",
    "RequestTooLarge",
    "WorkerCrashed",
    "attach",
    "connect",
    "DEFAULT_LIMIT",
    "DEFAULT_POOLS",
    "DimensionEvicted",
    "DimensionNotFound",
    "DirectoryFull",
    "GenerationTimeout",
    "Handle",
    "InstanceExists",
    "InvalidArgument",
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
    "ReaderClosed",
    "ReloadTimeout",
    "RemoteTraceback",
    "SharedInstance",
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
    "worker_reader",
]
