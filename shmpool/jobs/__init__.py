"""The job protocol: the job board in shared memory and the client that submits to it.

The board's layout (``jobs_layout``) and its operations under the jobs lock (``jobboard``),
request/response encoding with msgpack (``codec``), what may be called by name (``callables``),
the opt-in busy-wait (``spin``), the ``concurrent.futures.Executor`` users hold (``client``), and
what a job function sees of its worker (``worker_context``).

May import: ``shmpool.substrate``, ``shmpool.data`` and ``shmpool.errors``. Never
``shmpool.coordinator`` or ``shmpool.workers``: a client process runs none of their code.
"""
