"""The worker processes (installed as ``shmpool.workers``): ``python -m shmpool.workers.worker NAME INDEX``.

A worker attaches as a reader, takes requests off the job board and runs the allowed jobs
(``jobs``, the allow-list; ``config``, what its coordinator tells it; ``watchdog``, exit when
the coordinator dies). Their supervision runs in the coordinator (``shmpool.coordinator.pool``).

May import: everything in ``shmpool`` except ``shmpool.coordinator``.
"""
