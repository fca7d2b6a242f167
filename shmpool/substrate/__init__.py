"""The substrate: named shared memory, the crash-safe lock, the control segment and the allocator.

What lives here knows nothing of dimensions or jobs: POSIX segments and instance names
(``segments``, ``names``), owner/mode checks of every shared object (``trust``), the flock-based
``SharedLock`` (``lock``), process liveness (``_proc``), the platform's capabilities and
``/dev/shm`` space (``platform``, ``backing``), the control segment's layout (``layout``), an
instance's pools (``instance``), the bitmap allocation table (``alloc``), the memory limit
(``limits``), statistics (``stats``), id checks (``ids``) and test-only fault points (``_faults``).

May import: the standard library, numpy, posix_ipc, filelock, loguru, and ``shmpool.errors``.
Never ``shmpool.data``, ``shmpool.jobs``, ``shmpool.coordinator`` or ``shmpool.workers``.
"""
