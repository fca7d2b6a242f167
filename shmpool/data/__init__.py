"""The data plane: region files, published generations, and the lock-free readers of them.

The region format (``region``, ``region_builder``, ``compression``, the built-in ``sample``), the
directory of published generations (``directory``), reader rows and exact pins (``readers``,
``pins``, ``mapping``), and what a reader process uses: ``attach`` and ``Reader`` (``reader``),
``LoadedContext`` and ``ContextCollection`` (``context``).

May import: ``shmpool.substrate`` and ``shmpool.errors``. Never ``shmpool.jobs``,
``shmpool.coordinator`` or ``shmpool.workers``: a reader process runs none of their code.
"""
