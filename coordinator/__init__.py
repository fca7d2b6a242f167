"""The owning process of a shmpool instance (installed as ``shmpool.coordinator``).

It creates and unlinks every shared object, publishes dimensions (``publisher``, ``loading``,
``proto``), keeps memory under its limit (``capacity``), supervises the worker processes
(``pool``), and serves the command line (``cli``) and metrics (``metrics``). Logging is silenced
with the rest of shmpool (``logger.disable("shmpool")``) until the CLI or the user enables it.

May import: everything in ``shmpool`` and ``shmpool.workers.config`` / ``shmpool.workers.jobs``
(what it tells its workers). Nothing imports it but programs that own an instance.
"""

from .coordinator import Coordinator
from .proto import ProtoDimension

__all__ = ["Coordinator", "ProtoDimension"]
