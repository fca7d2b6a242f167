"""The owning process of a shmpool instance (installed as ``shmpool.coordinator``).

It creates and unlinks every shared object, publishes dimensions (``publisher``, ``loading``,
``proto``), keeps memory under its limit (``capacity``), supervises the worker processes
(``pool``), and serves the command line (``cli``) and metrics (``metrics``). Logging is silenced
with the rest of shmpool (``logger.disable("shmpool")``) until the CLI or the user enables it.

``Coordinator`` and ``ProtoDimension`` load on first use (PEP 562 ``__getattr__``): importing a
submodule imports this package first, and ``shmpool --help``, ``shmpool cleanup`` or the Dask
host's helpers must not pay for the coordinator's whole import graph (numpy, the job board, the
publisher) before they know they need it.

May import: everything in ``shmpool`` and ``shmpool.workers.config`` / ``shmpool.workers.jobs``
(what it tells its workers). Nothing imports it but programs that own an instance.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what __getattr__ below returns, for type checkers; not imported at run time
    from .coordinator import Coordinator
    from .proto import ProtoDimension

__all__ = ["Coordinator", "ProtoDimension"]


def __getattr__(name: str) -> Any:
    value: Any
    if name == "Coordinator":
        from .coordinator import Coordinator
        value = Coordinator
    elif name == "ProtoDimension":
        from .proto import ProtoDimension
        value = ProtoDimension
    else:
        raise AttributeError(f"module 'shmpool.coordinator' has no attribute {name!r}")
    globals()[name] = value
    return value
