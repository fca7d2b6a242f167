"""The coordinator: the one process that owns an instance's shared memory.

It creates the segments, loads region files, crystallizes proto-dimensions, frees superseded
generations once no reader pins them, and unlinks everything at stop. One coordinator per
instance name, enforced with an flock'd lock file: the kernel releases it if the coordinator
dies, so a newcomer can take over (after sweeping the dead one's leftovers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import posix_ipc
from shmpool.substrate._log import logger

from shmpool import _last_resort
from shmpool.jobs.codec import encode_error
from shmpool.data.context import LoadedContext
from shmpool.substrate import platform
from shmpool.errors import (AllocationFailed, AllocationFailure, AttachError, CoordinatorStateError, DimensionNotFound,
                            EditConflict,
                            GenerationNotNewer,
                            InstanceExists, InvalidArgumentType, InvalidLayer, LimitExceeded,
                            LockTimeout, SharedMemoryFull)
from shmpool.substrate.ids import as_id
from shmpool.jobs.spin import SPIN_ENV, spin_seconds
from shmpool.jobs.jobboard import JobBoard
from shmpool.jobs.jobs_layout import JobsLayout
from shmpool.substrate.instance import DEFAULT_POOLS, PoolSpec, SharedInstance, coordinator_pid
from shmpool.substrate.layout import W
from shmpool.substrate.mapped_files import memory_backed, store_dir
from shmpool.substrate.limits import DEFAULT_LIMIT, Budget, Thresholds, check_worker_count
from shmpool.substrate.names import raise_if_foreign, runtime_dir, validate_name
from shmpool.data.pins import list_pins
from shmpool.data.reader import Reader
from shmpool.jobs.arg_spill import adopt_arguments, free_arguments, settle_lent_arguments
from shmpool.jobs.spill import free_spill
from shmpool.data.sample import SAMPLE, SampleData, sample_dir
from shmpool.workers.config import WorkerConfig
from shmpool.workers.jobs import POLICY_ENV, JobPolicy
from shmpool.coordinator.pool import WorkerPool

from . import arguments as check
from . import exit_cleanup
from .capacity import CapacityManager, CapacityPolicy
from .in_flight import InFlight, while_running
from .loading import LoadReport, file_dimension, load_region_files, place_file, region_files
from .name_lock import NameLock, remove_instance_files
from .name_watch import LostNames, NameWatch, instance_exists, lost_names_error
from .proto import ProtoDimension
from .publisher import MAX_PIN_AGE, EditPlacement, Placement, Published, Publisher
from .reaper_sleep import RECLAIM_INTERVAL, ReapClock, sleep_after_round
from .region_store import RegionStore, StoredRegion
from .verified import VerifiedFiles

__all__ = ["Coordinator"]

_T = TypeVar("_T")


def _in_background(fn: Callable[..., _T], *args: Any) -> Future[_T]:
    """``fn(*args)`` in a new daemon thread; the Future carries its result or its exception."""
    future: Future[_T] = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=run, name=f"shmpool-{getattr(fn, '__name__', 'task')}", daemon=True).start()
    return future

def default_pools(memory_limit: int) -> tuple[PoolSpec, ...]:
    """DEFAULT_POOLS, with the largest pool grown to hold the whole ``memory_limit`` if it does not.

    Any layer that fits the limit then fits a pool: with the fixed 280 blocks of 1 MiB a 300 MiB
    layer failed under a 1 GiB limit until the user guessed ``pools=``. Pools are sparse on tmpfs,
    so the larger pool costs only its bitmap (one bit per MiB of limit).
    """
    *smaller, largest = DEFAULT_POOLS
    blocks = -(-memory_limit // largest.block_size)
    if blocks <= largest.block_count:
        return DEFAULT_POOLS
    return (*smaller, PoolSpec(largest.block_size, blocks))


ROOM_WAIT = 1.0  # seconds crystallize waits for evicted regions to be freed before retrying
DEAD_SWEEP_INTERVAL = 1.0  # allocations of dead processes are reclaimed this often
HEAL_INTERVAL = 0.1  # the job board's supervision round: dead clients, invariants, wake-ups
MIN_JOB_PAYLOAD = 1  # bytes of a slot's request area: smaller requests spill (RequestTooLarge past the limit)
IN_FLIGHT_WAIT = 10.0  # seconds stop() waits for other threads' crystallize, edit, stats... to end
REAPER_JOIN = 5.0    # seconds stop() waits for the reaper to leave its round before leaving it the unmapping


class Coordinator:
    """Owns instance ``name``: ``start()`` makes every dimension readable by other processes.

    It starts empty: with ``data_dir=None`` it serves what the program publishes
    (:meth:`create_proto_dimension`, :meth:`crystallize`); with a folder, its ``*.region`` files
    too; ``data_dir=shmpool.SAMPLE`` serves the built-in 14-dimension sample. Usable as a context
    manager (start on enter, stop on exit). Its workers run the built-in jobs, the functions
    named in ``jobs`` (``{name: function or "module:function"}``) and ``"module:function"``
    of modules in ``job_modules`` (prefixes); any other job name fails with UnknownJob.
    ``worker_init`` (a module-level function or ``"module:function"``) runs once in each worker
    as ``worker_init(*worker_init_args)`` before it serves; ``job_timeout`` (seconds) is the
    execution limit of jobs that set none, past which the worker is killed and replaced and the
    job fails with JobTimeout. Workers get this process's ``sys.path``.
    ``verify_cache`` (True: ``<runtime dir>/verified-regions.json``; a path; False: none) is
    where region files verified in full are remembered, so that an unchanged one skips its
    content checks at the next start (docs/architecture.md, Start-up). ``mapped_regions``
    (default True) serves each region file of ours that group and others cannot write from a
    verified, read-only copy in ``<runtime dir>/regions`` that every process maps, made at the
    first start and reused while the file is unchanged: nothing is copied into shared memory.
    """

    def __init__(self, name: str, *, data_dir: str | os.PathLike[str] | SampleData | None = None,
                 memory_limit: int = DEFAULT_LIMIT, pools: Sequence[PoolSpec] | None = None,
                 thresholds: Thresholds = Thresholds(), sample_seed: int = 0,
                 max_dimensions: int = 256, max_readers: int = 512, workers: int | None = None,
                 job_slots: int = 256, job_payload: int = 64 * 1024, max_clients: int = 256,
                 drain_timeout: float = 5.0, compress_cold: bool = False, huge_pages: bool = False,
                 capacity: CapacityPolicy | None = None, max_pin_age: float = MAX_PIN_AGE,
                 jobs: Mapping[str, Callable[..., Any] | str] | None = None,
                 job_modules: Iterable[str] = (), worker_init: Callable[..., Any] | str | None = None,
                 worker_init_args: Sequence[Any] = (), job_timeout: float | None = None,
                 worker_spin_us: float | str | None = None,
                 verify_cache: bool | str | os.PathLike[str] = True, mapped_regions: bool = True) -> None:
        self.name = validate_name(name)
        # Checked here, where a bad entry is the caller's mistake, not in every worker later.
        self.job_policy = JobPolicy.build(jobs, job_modules)
        self.worker_config = WorkerConfig.build(init=worker_init, init_args=worker_init_args,
                                                job_timeout=job_timeout)
        # Workers busy-wait this long for the next request before sleeping (shmpool.jobs.spin).
        self.worker_spin = spin_seconds(worker_spin_us)
        # None: start empty (the program publishes); SAMPLE: the built-in sample, built at start.
        self.serves_sample = data_dir is SAMPLE
        if not isinstance(data_dir, SampleData):
            check.path_or_none(data_dir, "data_dir")
        self.data_dir = Path(data_dir) if data_dir is not None and not isinstance(data_dir, SampleData) else None
        # Each checked here, typed and named (coordinator/arguments.py), not where it fails below.
        self.memory_limit = memory_limit = check.whole(memory_limit, "memory_limit", minimum=1)
        specs = check.pool_specs(pools)
        self.pools = specs if specs is not None else default_pools(memory_limit)
        self.thresholds = check.thresholds(thresholds)
        self.sample_seed = check.whole(sample_seed, "sample_seed", minimum=0)
        self._max_dimensions = check.whole(max_dimensions, "max_dimensions", minimum=1, maximum=check.U32_MAX)
        self._max_readers = check.whole(max_readers, "max_readers", minimum=1, maximum=check.U32_MAX)
        checked_workers = check_worker_count(workers)
        self.worker_count = (os.cpu_count() or 1) if checked_workers is None else checked_workers
        self._job_config = (check.whole(job_slots, "job_slots", minimum=1),
                            check.whole(max_clients, "max_clients", minimum=1),
                            check.whole(job_payload, "job_payload", minimum=MIN_JOB_PAYLOAD))
        self.drain_timeout = check.seconds(drain_timeout, "drain_timeout")
        self.max_pin_age = check.seconds(max_pin_age, "max_pin_age", positive=True, finite=True)
        check.verify_cache(verify_cache)
        if capacity is not None and not isinstance(capacity, CapacityPolicy):
            raise InvalidArgumentType(argument="capacity", value=capacity, reason="must be a CapacityPolicy or None")
        # Where unchanged, already-verified region files are remembered (coordinator/verified.py):
        # True for <runtime dir>/verified-regions.json, a path for another file, False for none.
        self.verify_cache = verify_cache
        self.verified_files: VerifiedFiles | None = None
        # Region files served by mapping their copy in the region store (coordinator/region_store.py).
        self.mapped_regions = mapped_regions
        self._held: list[StoredRegion] = []  # store copies served: open and share-locked until stop
        self._store: RegionStore | None = None
        if capacity is None:
            capacity = CapacityPolicy(compress_cold=compress_cold, huge_pages=huge_pages)
        elif compress_cold or huge_pages:
            capacity = dataclasses.replace(capacity, compress_cold=capacity.compress_cold or compress_cold,
                                           huge_pages=capacity.huge_pages or huge_pages)
        self.capacity_policy = capacity
        self._capacity: CapacityManager | None = None
        self._board: JobBoard | None = None
        self._pool: WorkerPool | None = None
        self._file_lock = NameLock(runtime_dir() / f"{name}.coordinator.lock")
        self._inst: SharedInstance | None = None
        self._publisher: Publisher | None = None
        self._reader: Reader | None = None
        self._protos: dict[int, ProtoDimension] = {}
        self._protos_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._handoff = threading.Lock()  # between stop() and a reaper that outlived its join
        self._reaper_gone = True          # no reaper thread runs (set False when one starts)
        self._leftovers: list[Callable[[], None]] = []  # closes left to the reaper by stop()
        self._reaper: threading.Thread | None = None
        self.reaper_rounds = 0  # rounds the reaper began (bench_idle and the tests count them)
        # Set when this instance's names vanished from /dev/shm under it (coordinator/name_watch.py);
        # the coordinator then stops itself, once (the lock keeps that stop and the owner's apart).
        self.names_lost: LostNames | None = None
        self._name_watch: NameWatch | None = None
        self._stop_lock = threading.Lock()
        self._in_flight = InFlight(name)  # calls using the shared memory: stop() waits for them
        self.load_report = LoadReport()
        self.started_at: float | None = None
        self.startup_seconds: float | None = None
        self.load_seconds: float | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> "Coordinator":
        """Create the shared memory and load every dimension; returns once all are readable.

        Raises InstanceExists if another live coordinator owns the name, UntrustedObject (an
        AttachError naming the owner) if another user holds shared objects under the name,
        UnsafeRuntimeDir if the runtime folder is not ours alone (the constructor already
        checks), FileNotFoundError if ``data_dir`` does not exist, SharedMemoryFull (naming
        /dev/shm, its size and free bytes; nothing is left behind) if /dev/shm cannot hold the
        control segment or the job board. Bad region files, and those that do not fit in
        /dev/shm, are skipped with a warning; a /dev/shm smaller than the memory limit plus the
        job board is a WARNING at start.
        """
        if self._inst is not None:
            raise CoordinatorStateError(name=self.name, running=True)
        t0 = time.perf_counter()
        self._show_warnings_on_stderr()
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise FileNotFoundError(f"data directory {self.data_dir} does not exist")
        if not self._file_lock.try_acquire():
            raise instance_exists(self.name, self._live_owner_pid())
        try:
            self._check_shm_space()
            self._inst = SharedInstance.create(
                self.name, pools=self.pools, memory_limit=self.memory_limit, thresholds=self.thresholds,
                max_dimensions=self._max_dimensions, max_readers=self._max_readers,
                growth=self.capacity_policy.pool_growth, huge_pages=self.capacity_policy.huge_pages)
            self._publisher = Publisher(self._inst, max_pin_age=self.max_pin_age)
            paths = self._region_files()
            spill = self.capacity_policy.spill_dir or runtime_dir() / f"{self.name}.spill"
            self._capacity = CapacityManager(self._inst, self._publisher, self.capacity_policy, Path(spill))
            self._capacity.remove_spills()  # a crashed run's; we hold the name's lock, nobody needs them
            self.verified_files = self._open_verify_cache()
            board: Future[JobBoard] | None = None
            if self.worker_count > 0:
                if self._room_for_board_and(paths):
                    # Reserving the board (32.6 MiB by default) is page allocation outside the
                    # GIL: done beside the data, on another core, when both surely fit.
                    board = _in_background(self._create_board, *self._job_config)
                else:
                    # Before the data: the board is fixed-size and reserved whole, so on a small
                    # /dev/shm it gets its room and the region files take what is left (those
                    # that do not fit are skipped with a warning) rather than the other way round.
                    self._board = self._create_board(*self._job_config)
            try:
                store = self._store = RegionStore() if self.mapped_regions and paths and _store_on_disk() else None
                self.load_report = load_region_files(self._publisher, paths, instance=self._inst,
                                                     cache=self.verified_files, store=store)
                self._held = self.load_report.held
            finally:
                if board is not None:
                    self._board = board.result()  # its error, if any, fails the start
            self.load_seconds = time.perf_counter() - t0  # what the < 100 ms start-up target covers
            if self._board is not None:
                self._pool = WorkerPool(self.name, self._board, self.worker_count,
                                        env={POLICY_ENV: self.job_policy.to_json(),
                                             SPIN_ENV: str(self.worker_spin * 1e6)},
                                        config=self.worker_config, on_exit=self._inst.wake_coordinator)
                self._pool.start()
            self._name_watch = NameWatch(self.name)  # everything is created: these names are ours
            self._reaper = threading.Thread(target=self._reap_loop, name=f"shmpool-{self.name}-reaper",
                                            daemon=True)
            self._reaper_gone = False
            self._reaper.start()
        except posix_ipc.ExistentialError:
            # A name appeared between the sweep and its O_EXCL creation: someone else is using it.
            self._teardown()
            raise_if_foreign(self.name)
            raise InstanceExists(name=self.name, owner_pid=self._live_owner_pid()) from None
        except BaseException:
            self._teardown()
            raise
        self.started_at = time.time()
        self.startup_seconds = time.perf_counter() - t0
        self._stop_at_process_exit()
        logger.info("coordinator {!r} started in {:.1f} ms: {} dimensions, {} bytes, {} files skipped",
                    self.name, self.startup_seconds * 1e3, len(self.load_report.loaded),
                    self.load_report.bytes_loaded, len(self.load_report.skipped))
        return self

    def _region_files(self) -> list[Path]:
        """What start() loads: nothing without ``data_dir``, the sample's files for SAMPLE."""
        if self.serves_sample:
            return region_files(sample_dir(self.sample_seed))
        return region_files(self.data_dir) if self.data_dir is not None else []

    def _room_for_board_and(self, paths: list[Path]) -> bool:
        """Whether /dev/shm has room for the board and every file, with a block of slack each."""
        fs = platform.space()
        if fs is None:
            return False
        largest_block = max(p.block_size for p in self.pools)
        need = self._board_bytes() + sum(p.stat().st_size + largest_block for p in paths)
        return fs.free >= need

    def _open_verify_cache(self) -> VerifiedFiles | None:
        if self.verify_cache is False:
            return None
        return VerifiedFiles.load(None if self.verify_cache is True else self.verify_cache)

    def _board_bytes(self) -> int:
        slots, clients, payload = self._job_config
        return JobsLayout.compute(slots, clients, payload).size if self.worker_count > 0 else 0

    def _check_shm_space(self) -> None:
        """Warn when /dev/shm is smaller than what this instance may use; pools are sparse, so a
        small /dev/shm still works until usage reaches it (then allocations fail, typed)."""
        fs = platform.space()
        board = self._board_bytes()
        if fs is None or fs.free >= self.memory_limit + board:
            return
        want_mib = -(-(self.memory_limit + board) * 5 // 4 // (1024 * 1024))  # 25% headroom
        logger.warning(
            "shared-memory filesystem {} has {} bytes free ({} in all), less than the memory limit "
            "({} bytes) plus the job board ({} bytes): allocations past its free space will fail with "
            "SharedMemoryFull. Give it more room (docker run --shm-size={}m) or lower the limit to fit "
            "(--memory-limit)", fs.filesystem, fs.free, fs.size, self.memory_limit, board, want_mib)

    def _create_board(self, slots: int, clients: int, payload: int) -> JobBoard:
        # The board is reserved whole: a response written into it, by a worker or by the
        # coordinator answering for a dead one, must never be a first touch of a missing page.
        try:
            return JobBoard.create(self.name, slots=slots, channels=clients, payload=payload)
        except (OSError, SharedMemoryFull) as exc:  # its semaphores are files in /dev/shm too
            if isinstance(exc, OSError) and not platform.is_full(exc):
                raise
            # The memory limit bounds the pools, not the board: name what does shrink it.
            advice = (f"make the job board smaller: job_slots={slots} x 2 x job_payload={payload} bytes plus "
                      f"max_clients={clients} channels; fewer job_slots, a smaller job_payload or fewer "
                      "max_clients shrink it (the memory limit does not), and workers=0 (--workers 0) serves "
                      "without one")
            raise platform.full_error(self._board_bytes(), f"the job board of {self.name!r}", advice) from None

    def stop(self) -> None:
        """Drain jobs, stop workers, unmap and unlink every shared object (idempotent).

        Calls of other threads under way (crystallize, an edit, publish_region_file, stats...)
        are waited for (up to IN_FLIGHT_WAIT seconds) and new ones raise CoordinatorStateError.
        New submissions are refused at once; jobs already queued or running get up to
        ``drain_timeout`` seconds to finish; whatever is still queued then is answered with
        AttachError ("coordinator stopped") rather than run. Then workers get SIGTERM.
        """
        with self._stop_lock:  # the owner's stop and the one after lost names (_reap_loop) may meet
            if self._inst is None:
                return
            # No call of another thread may be inside the shared memory as it is unmapped.
            still = self._in_flight.close(IN_FLIGHT_WAIT)
            try:
                if still:
                    logger.warning("coordinator {!r}: {} call(s) of other threads still under way after {} s "
                                   "(blocked on a shared lock?); stopping all the same", self.name, still,
                                   IN_FLIGHT_WAIT)
                if self._board is not None:
                    self._drain(self._board)
                self._inst.mark_stopping()
                self._teardown()
                exit_cleanup.forget(self)
            finally:
                self._in_flight.reopen()
            logger.info("coordinator {!r} stopped", self.name)

    @staticmethod
    def _show_warnings_on_stderr() -> None:
        """This process runs a coordinator: its user must see capacity warnings, skipped files and
        lost workers without configuring anything (shmpool/_last_resort.py says how, and the switch)."""
        _last_resort.activate()

    def _stop_at_process_exit(self) -> None:
        """A program that never calls stop() still leaves nothing in /dev/shm: this coordinator is
        stopped at interpreter exit and on SIGTERM (coordinator/exit_cleanup.py says how)."""
        exit_cleanup.remember(self)

    def _drain(self, board: JobBoard) -> None:
        board.stop_accepting()
        deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline:
            counts = board.counts()
            if counts["queued"] == 0 and counts["running"] == 0:
                break
            time.sleep(0.005)
        stopped = AttachError(name=self.name, reason="the coordinator stopped before running this job")
        cancelled = board.fail_outstanding(lambda _slot: encode_error(stopped))
        if cancelled:
            logger.warning("coordinator {!r} stopped with {} queued jobs unanswered; they failed with "
                           "AttachError", self.name, cancelled)

    def _teardown(self) -> None:
        self._stop_event.set()
        reaper, self._reaper = self._reaper, None
        if reaper is not None and self._inst is not None:
            self._inst.wake_coordinator()
            reaper.join(REAPER_JOIN)
            if reaper.is_alive():
                # A step of its round waits in a shared lock (a process stopped holding it):
                # names go now, the mappings it works on when it leaves (_reaper_exits).
                logger.warning("coordinator {!r}: the reaper thread is still in a reclaim round after {} s "
                               "(a shared lock held by a stopped process?); unmapping is left to it",
                               self.name, REAPER_JOIN)
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        watch, self._name_watch = self._name_watch, None
        lost = watch is not None and self.names_lost is not None
        if self._board is not None:
            if not lost:  # after lost names, unlink_ours below removes only what is still ours
                self._board.unlink()
            self._after_reaper(self._board.close)
            self._board = None
        with self._protos_lock:
            protos, self._protos = self._protos, {}
        stopped = functools.partial(CoordinatorStateError, name=self.name, running=False)
        for proto in protos.values():
            # An edit's base goes with the instance, and no proto of this run can be published
            # by the next: ended, so that using one raises CoordinatorStateError, and a restart
            # does not find stale protos holding ids (create_proto_dimension, edit_dimension).
            proto._end(stopped)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._capacity is not None:
            self._capacity.remove_spills()  # evicted dimensions cannot come back once we are gone
            self._capacity = None
        if self._publisher is not None:
            self._publisher.wakeups.close()  # waiters see STATE stopping now, not a slice later
        if self._inst is not None:
            if watch is not None and lost:
                watch.unlink_ours()  # only the names still pointing at what we created
            else:
                self._inst.unlink()
            self._after_reaper(self._inst.close)
            self._inst = None
        held, self._held = self._held, []
        for stored in held:  # after the names: no new reader can map them (mapped ones stay valid)
            stored.close()
        store, self._store = self._store, None
        if store is not None:
            # Keeps the store within its bound and removes the temporaries of copies killed
            # half way (a crashed start's), off the start path.
            store.prune()
        if watch is not None:
            watch.close()
        self._publisher = None
        self._let_go_of_the_name()

    def _let_go_of_the_name(self) -> None:
        """The instance is gone: remove what it made in the runtime folder, then the name lock
        (its file too, while still holding it: coordinator/name_lock.py says why that is safe)."""
        if not self._file_lock.is_locked:
            return
        default_spill = runtime_dir() / f"{self.name}.spill"
        remove_instance_files(self.name, default_spill if self.capacity_policy.spill_dir is None else None)
        self._file_lock.release(remove=True)

    def __enter__(self) -> "Coordinator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._inst is not None

    def _live_owner_pid(self) -> int | None:
        return coordinator_pid(self.name, self._file_lock.path)  # also while it is starting

    @staticmethod
    def _free_stranded_spills(inst: SharedInstance, board: JobBoard) -> None:
        stranded, board.stranded_spills = board.stranded_spills, []
        for spill in stranded:  # its new owner (a client that read it) may have freed it already
            free_spill(inst, spill)
        # Arguments of jobs orphaned while they ran (their client died): the board's now, so that
        # the dead client's settling leaves them to the worker that reads them (arg_spill.py).
        orphaned, board.orphaned_args = board.orphaned_args, []
        me = inst.coordinator()
        for arguments in orphaned:  # unless a worker took them over (it kept a view of them)
            adopt_arguments(inst, arguments, me)
        ended, board.stranded_args = board.stranded_args, []
        for arguments in ended:  # orphaned jobs whose worker died: nobody else frees them
            free_arguments(inst, arguments)

    def _reap_loop(self) -> None:
        """The reaper thread: a round every RECLAIM_INTERVAL while anything may need one soon,
        else one when woken or when a clocked step is due, at most IDLE_TICK apart
        (coordinator/reaper_sleep.py says which is which; an idle coordinator costs ~1 round a second).

        It keeps its own references to what it works on, and looks at the stop flag between
        every two steps of a round: a step can wait for as long as another process holds a
        shared lock (stopped, say), longer than stop() waits for this thread. stop() then
        removes the names at once but leaves the mappings to this thread, which unmaps them
        when it leaves (_reaper_exits): nothing is torn down under a step still running."""
        inst, publisher = self._inst, self._publisher
        assert inst is not None and publisher is not None  # started by start(), after both
        clock = ReapClock(time.monotonic(), time.monotonic())
        watch = self._name_watch
        assert watch is not None  # made by start() before this thread
        sleep = RECLAIM_INTERVAL
        try:
            while not self._stop_event.is_set():
                # Woken early by readers that need an evicted dimension back, by publications,
                # by a worker exiting or taking the first job of an idle board, and by stop().
                inst.wait_for_wake(sleep)
                publisher.wake_reaper = False
                board = self._board
                if board is not None and sleep > RECLAIM_INTERVAL:
                    board.reaper_awake()
                if self._stop_event.is_set():
                    break
                # Before supervising: a worker restarted after the names went could never attach.
                lost = watch.check()
                if lost is not None:
                    self.names_lost = lost
                    logger.error(lost_names_error(lost))
                    _in_background(self.stop).add_done_callback(self._log_stop_failure)  # stop() joins this thread
                    break
                sleep = RECLAIM_INTERVAL
                self.reaper_rounds += 1
                try:
                    for _ in self._reap_round(inst, publisher, clock):
                        if self._stop_event.is_set():
                            break
                    else:
                        sleep = sleep_after_round(clock, clock.sweep + DEAD_SWEEP_INTERVAL, publisher=publisher,
                                                  pool=self._pool, board=self._board, capacity=self._capacity,
                                                  policy=self.capacity_policy)
                except Exception:  # the reaper must outlive any one bad round
                    logger.exception("reclaim round of coordinator {!r} failed", self.name)
        finally:
            self._reaper_exits()

    def _reap_round(self, inst: SharedInstance, publisher: Publisher, clock: ReapClock) -> Iterator[None]:
        """One reaper round, one step per ``yield`` (the loop stops between two steps)."""
        pool, board, reader, capacity = self._pool, self._board, self._reader, self._capacity
        if pool is not None and board is not None:
            pool.supervise()
            yield
            if time.monotonic() - clock.heal >= HEAL_INTERVAL:
                # One supervision round: dead clients settled, invariants restored,
                # swallowed wake-ups re-sent (docs/architecture.md, job board invariants).
                try:
                    board.sweep_dead_clients()
                    board.supervise()
                except LockTimeout as exc:  # a stopped holder: the next round retries
                    logger.warning("job board supervision of {!r} postponed: {}", self.name, exc)
                clock.heal = time.monotonic()
                yield
            self._free_stranded_spills(inst, board)
            yield
        if reader is not None:
            reader.drop_stale()  # our own reader must not pin what it no longer uses
            yield
        if capacity is not None:
            capacity.tick()
            yield
        clock.resent = publisher.wakeups.resend()  # a wake-up lost to store reordering: late, not lost
        yield
        publisher.reclaim()
        if time.monotonic() - clock.sweep >= DEAD_SWEEP_INTERVAL:
            yield
            inst.table.reclaim_dead()
            yield
            if board is not None:
                try:  # lent blocks (spilled arguments) the sweep left: freed here if no job names them
                    settle_lent_arguments(inst, board)
                except LockTimeout as exc:
                    logger.warning("spilled arguments of dead clients on {!r} left for later: {}", self.name, exc)
                yield
            publisher.registry.reap_dead()  # keeps readers_attached honest when idle
            clock.sweep = time.monotonic()

    def _reaper_exits(self) -> None:
        with self._handoff:
            self._reaper_gone = True
            leftovers, self._leftovers = self._leftovers, []
        for close in leftovers:  # stop() came and went while a step of ours was still running
            try:
                close()
            except Exception:
                logger.exception("coordinator {!r}: closing after the reaper's last round failed", self.name)

    def _after_reaper(self, close: Callable[[], None]) -> None:
        """Run ``close`` now if the reaper thread is gone, else when it leaves."""
        with self._handoff:
            if not self._reaper_gone:
                self._leftovers.append(close)
                return
        close()

    def _log_stop_failure(self, done: Future[None]) -> None:
        if done.exception() is not None:
            logger.opt(exception=done.exception()).error("stopping {!r} after its names were lost failed", self.name)

    def _require(self) -> tuple[SharedInstance, Publisher]:
        if self._inst is None or self._publisher is None:
            raise CoordinatorStateError(name=self.name, running=False)
        return self._inst, self._publisher

    def _require_capacity(self) -> CapacityManager:
        """The capacity manager, made by start() beside the publisher; CoordinatorStateError
        if the coordinator is not running (a stop() may have come between two calls)."""
        capacity = self._capacity
        if capacity is None:
            raise CoordinatorStateError(name=self.name, running=False)
        return capacity

    # ----------------------------------------------------------------- proto-dimensions

    @while_running
    def create_proto_dimension(self, dimension_id: int, name: str) -> ProtoDimension:
        """A new, empty, heap-backed dimension to fill and then :meth:`crystallize`."""
        self._require()
        dimension_id = as_id(dimension_id, "dimension_id")
        with self._protos_lock:
            if dimension_id in self._protos:
                raise InvalidLayer(dimension_id=dimension_id, layer_id=None,
                                   reason="a proto-dimension with this id already exists")
            proto = ProtoDimension(dimension_id, name)
            self._protos[dimension_id] = proto
        return proto

    def proto(self, dimension_id: int) -> ProtoDimension:
        dimension_id = as_id(dimension_id, "dimension_id")
        proto = self._protos.get(dimension_id)
        if proto is None:
            raise DimensionNotFound(dimension_id=dimension_id, available=list(self._protos))
        return proto

    @while_running
    def edit_dimension(self, dimension_id: int) -> ProtoDimension:
        """A proto-dimension that starts as the published generation of ``dimension_id``.

        Nothing is copied: :meth:`ProtoDimension.add_layer` replaces (or adds) a layer,
        ``remove_layer`` removes one, and :meth:`crystallize` then writes only the changed
        layers plus a new layer index; the unchanged layers stay shared with earlier generations
        (their blocks are freed when no live generation uses them any more). Raises
        DimensionNotFound if the dimension is not published, what its reload raised if it is
        evicted and cannot come back (RegionFormatError, LimitExceeded), InvalidLayer if a proto of that id
        exists, unless it is an edit whose base was superseded (crystallizing it could only
        raise EditConflict): that one is ended (each of its calls raises EditConflict) and
        replaced. crystallize raises EditConflict if another publication came first.
        """
        _, publisher = self._require()
        dimension_id = as_id(dimension_id, "dimension_id")
        if dimension_id in publisher.evicted:
            # An edit needs its base in shared memory; a failed reload says why (the file, the
            # limit), where hold_current below could only say "not found".
            self._require_capacity().reload(dimension_id, strict=True)
        while True:
            old = self._protos.get(dimension_id)
            # An existing edit is judged with its crystallize lock held: not while it publishes.
            with old._publishing if old is not None else contextlib.nullcontext(), self._protos_lock:
                if self._protos.get(dimension_id) is not old:
                    continue  # consumed or replaced meanwhile: look again
                old_base = None if old is None else old._base
                if old is not None and (old_base is None or publisher.current.get(dimension_id) is old_base):
                    raise InvalidLayer(dimension_id=dimension_id, layer_id=None,
                                       reason="a proto-dimension with this id already exists")
                base = publisher.hold_current(dimension_id)
                proto = self._protos[dimension_id] = ProtoDimension.editing(base, publisher)
                if old is not None and old_base is not None:
                    # The docs' answer to EditConflict is "start a new edit": an edit whose base
                    # moved on can never be crystallized, so the new one replaces it (before, it
                    # kept the id, InvalidLayer here for ever, and its hold kept the base
                    # generation from being freed).
                    self._end_stale_edit(old, old_base, publisher)
                return proto

    @while_running
    def crystallize(self, dimension_id: int, *, keep: bool = False, generation: int | None = None) -> int:
        """Write the proto-dimension into shared memory and publish it; returns the generation.

        Readers switch to the new generation on their next lookup; contexts they already hold
        stay valid. An existing dimension of the same id is replaced (its old generation is
        freed when no reader pins it). An edit (:meth:`edit_dimension`) writes only what it
        changed, and raises EditConflict if the dimension was republished since it started.
        The proto-dimension is consumed unless ``keep`` (an edit kept goes on from the new
        generation). ``generation`` publishes as that number rather than the next (every host of
        a cluster under the same one, shmpool.dask): it must exceed the current generation, else
        GenerationNotNewer (a ValueError) is raised and nothing changes.
        """
        self._require()
        proto = self.proto(dimension_id)
        with proto._publishing:  # one crystallize of a proto at a time (two used to leak holds)
            self._check_registered(proto)
            return self._crystallize(proto, keep=keep, generation=generation)

    def _check_registered(self, proto: ProtoDimension) -> None:
        """Under ``proto._publishing``: the proto is still the one of its id (another thread's
        crystallize may have consumed it, a new edit_dimension replaced it, stop() ended it)."""
        proto._check_live()
        if self._protos.get(proto.dimension_id) is not proto:
            raise DimensionNotFound(dimension_id=proto.dimension_id, available=list(self._protos))

    def _crystallize(self, proto: ProtoDimension, *, keep: bool, generation: int | None) -> int:
        inst, publisher = self._require()
        dimension_id = proto.dimension_id
        settled = proto._settled() if proto.base_generation is None else None  # a new proto: its layers now
        nbytes = settled.nbytes() if settled is not None else proto.nbytes()
        source = f"crystallized proto-dimension {dimension_id}"
        if generation is not None:
            generation = as_id(generation, "generation")
            entry = publisher.directory.find(dimension_id)
            current = publisher.directory.generation(entry) if entry is not None else 0
            if generation <= current:  # before allocating: a refusal must not evict anything
                raise GenerationNotNewer(dimension_id=dimension_id, generation=generation, current=current)
        base_generation = proto.base_generation
        if base_generation is not None:
            def place() -> int:
                new, removed = proto.changes()
                return publisher.publish_edit(dimension_id, base_generation, new, removed,
                                              source=f"edit of dimension {dimension_id}", generation=generation)
        else:
            builder = settled
            assert builder is not None  # settled above for a proto without a base
            place = functools.partial(publisher.place, nbytes, builder.write_into, layer_count=len(builder),
                                      name=builder.name, source=source, expect_dimension=dimension_id,
                                      generation=generation)
        try:
            generation = place()
        except (LimitExceeded, AllocationFailed) as exc:
            # Make room the way the 85% rule would (for a full or fragmented pool too), wait for
            # the evicted regions to be freed, then try once more; a second refusal stands.
            refuse_at = Budget.read(inst.control.words).refuse_at
            # What is reserved is more than the region: its layer index, in whole blocks. Judged
            # on the region alone, one just under the refusal point was taken for "may fit": every
            # other dimension was evicted (make_room's target below is then negative), and the
            # retry was refused all the same.
            request = nbytes if settled is None else publisher.region_allocation(
                nbytes, layer_count=len(settled), name=settled.name)[0]
            smallest = min(inst.table.block_sizes)
            reserved_at_least = -(-request // smallest) * smallest
            hopeless = reserved_at_least > refuse_at or (isinstance(exc, AllocationFailed)
                                                         and exc.kind is AllocationFailure.TOO_LARGE)
            if hopeless or not self.capacity_policy.evict or not self._require_capacity().make_room(refuse_at - 2 * nbytes):
                raise exc from None
            deadline = time.monotonic() + ROOM_WAIT  # evicted regions go once unpinned, after GRACE
            while publisher.pending_free() and time.monotonic() < deadline:
                time.sleep(0.005)
                publisher.reclaim()
            generation = place()
        old_base = proto._base  # an edit's base (what base_generation reports), None for a new proto
        if old_base is not None:
            proto._let_go_of(old_base, publisher)
            if keep:
                proto._rebase(publisher.hold_current(dimension_id), publisher)
        if not keep:
            with self._protos_lock:
                if self._protos.get(dimension_id) is proto:
                    del self._protos[dimension_id]
        return generation

    def _end_stale_edit(self, proto: ProtoDimension, base: Published, publisher: Publisher) -> None:
        """End an edit whose base is no longer the current generation (crystallizing it can
        only raise EditConflict: generations only grow) and let go of its base."""
        current = publisher.current.get(proto.dimension_id)
        conflict = functools.partial(EditConflict, dimension_id=proto.dimension_id, base_generation=base.generation,
                                     current_generation=None if current is None else current.generation)
        proto._end(conflict)
        proto._let_go_of(base, publisher)  # unless its crystallize, just done, let go of it first
        logger.info("edit of dimension {} from generation {} ended: a new edit_dimension replaces it (the "
                    "dimension moved on to generation {})", proto.dimension_id, base.generation,
                    None if current is None else current.generation)

    @while_running
    def publish_region_file(self, path: str | os.PathLike[str], *, generation: int | None = None) -> int:
        """Copy a region file (checksums verified) into shared memory as its dimension's next
        generation, or as ``generation``; returns the generation published.

        Raises RegionFormatError for a bad file, GenerationNotNewer for a ``generation`` that does
        not exceed the current one (nothing is allocated then), and what crystallize raises when
        the memory is full. The file stays the reload source if the dimension is evicted later.
        """
        inst, publisher = self._require()
        if path is None or not isinstance(path, (str, os.PathLike)):
            raise InvalidArgumentType(argument="path", value=path, reason="must be a path (str or os.PathLike)")
        if generation is not None:
            generation = as_id(generation, "generation")
            dimension_id = file_dimension(path)
            entry = publisher.directory.find(dimension_id)
            current = publisher.directory.generation(entry) if entry is not None else 0
            if generation <= current:  # before allocating
                raise GenerationNotNewer(dimension_id=dimension_id, generation=generation, current=current)
        return place_file(publisher, inst, path, generation=generation)

    @while_running
    def crystallize_many(self, dimension_ids: Iterable[int], *, keep: bool = False) -> dict[int, int]:
        """Publish the proto-dimensions ``dimension_ids`` together, as one atomic step.

        Returns {dimension id: new generation}. Every region (or edit) is written and checked
        before anything is published, and all of them become visible at one instant: a
        reader's ``snapshot()`` or ``load_contexts`` sees all the new generations or none. All
        or nothing: on any failure (DimensionNotFound for an id without a proto-dimension,
        InvalidArgument for a repeated id, EditConflict, LimitExceeded, AllocationFailed,
        DirectoryFull) nothing is published, nothing stays allocated and every proto-dimension
        is kept. The protos are consumed unless ``keep`` (an edit kept goes on from its new
        generation). Unlike :meth:`crystallize`, a full memory limit is not met by evicting
        first: free room, then call again.
        """
        self._require()
        protos = [self.proto(d) for d in dimension_ids]
        with contextlib.ExitStack() as locks:
            # One crystallize of a proto at a time, as crystallize; in id order, against deadlock.
            for p in sorted({id(p): p for p in protos}.values(), key=lambda p: p.dimension_id):
                locks.enter_context(p._publishing)
                self._check_registered(p)
            return self._crystallize_many(protos, keep=keep)

    def _crystallize_many(self, protos: list[ProtoDimension], *, keep: bool) -> dict[int, int]:
        _, publisher = self._require()
        items: list[Placement | EditPlacement] = []
        for p in protos:
            if p.base_generation is not None:
                new, removed = p.changes()
                items.append(EditPlacement(p.dimension_id, p.base_generation, tuple(new), tuple(removed),
                                           f"edit of dimension {p.dimension_id}"))
            else:
                settled = p._settled()  # its layers now, whatever other threads add meanwhile
                items.append(Placement(settled.nbytes(), settled.write_into, len(settled), settled.name,
                                       f"crystallized proto-dimension {p.dimension_id}", p.dimension_id))
        generations = publisher.place_many(items)
        for p in protos:  # as crystallize: an edit's base is let go, or the kept edit rebased
            old_base = p._base
            if old_base is not None:
                p._let_go_of(old_base, publisher)
                if keep:
                    p._rebase(publisher.hold_current(p.dimension_id), publisher)
        if not keep:
            with self._protos_lock:
                for p in protos:
                    if self._protos.get(p.dimension_id) is p:
                        del self._protos[p.dimension_id]
        return {p.dimension_id: g for p, g in zip(protos, generations)}

    # ----------------------------------------------------------------- reading

    def reader(self) -> Reader:
        """A reader in the coordinator's own process (created on first use)."""
        inst, _ = self._require()
        if self._reader is None:
            self._reader = Reader(inst, owns_instance=False)
        return self._reader

    def load_layer_context(self, dimension_id: int, layer_id: int) -> LoadedContext:
        """Proto-dimensions first (heap, generation 0), then published dimensions."""
        if type(dimension_id) is not int:  # True would find proto-dimension 1
            dimension_id = as_id(dimension_id, "dimension_id")
        proto = self._protos.get(dimension_id)
        if proto is not None:
            return proto.load_layer_context(layer_id)
        return self.reader().load_layer_context(dimension_id, layer_id)

    def kill_worker(self, pid: int, *, why: str) -> bool:
        """SIGKILL worker ``pid`` on purpose (stress and chaos tests): the pool replaces it as after
        any death, but reports it at INFO as killed by ``why`` rather than as an ERROR that
        blames the OOM killer. Returns False, killing nothing, if ``pid`` is not a live worker."""
        self._require()
        return self._pool is not None and self._pool.kill(pid, why)

    @while_running
    def reclaim(self) -> int:
        """Free unpinned superseded generations now (the reaper does this every 20 ms while any wait)."""
        return self._require()[1].reclaim()

    # ----------------------------------------------------------------- monitoring

    @while_running
    def stats(self) -> dict[str, Any]:
        """Memory by pool, utilization, fragmentation, failures, readers, generations."""
        inst, publisher = self._require()
        words = inst.control.words
        current, superseded = publisher.snapshot()
        out = inst.table.stats().as_dict()
        fs = platform.space()
        out.update({
            "name": self.name,
            "shm": fs._asdict() if fs is not None else None,
            "readers_attached": int(words[W.READERS_ATTACHED]),
            "readers_peak": int(words[W.READERS_PEAK]),
            "dimensions": len(current),
            "capacity": self._require_capacity().stats(),
            "generations": {p.dimension_id: p.generation for p in current},
            "superseded_pending": len(superseded),
            "pins": [p.as_dict() for p in list_pins(inst.control, inst.table.block_sizes)],
            "proto_dimensions": len(self._protos),
            "startup_ms": (self.startup_seconds or 0) * 1e3,  # including worker start
            "load_ms": (self.load_seconds or 0) * 1e3,  # segments created, every dimension readable
            "load": self._load_stats(),
        })
        if self._board is not None:
            out["jobs"] = self._board.counts()
            out["workers"] = {"count": self.worker_count, "pids": self._pool.pids() if self._pool else [],
                              "deaths": list(self._pool.deaths) if self._pool else []}
        return out

    def _load_stats(self) -> dict[str, Any]:
        report, cache = self.load_report, self.verified_files
        return {"files_verified": len(report.verified), "files_trusted": len(report.trusted),
                "files_mapped": len(report.mapped), "files_stored": len(report.stored),
                "store_ms": report.store_seconds * 1e3,
                "copy_ms": report.copy_seconds * 1e3, "verify_ms": report.verify_seconds * 1e3,
                "verify_cache": None if cache is None else
                {"path": str(cache.path), "hits": cache.hits, "misses": cache.misses,
                 "recorded": cache.recorded, "ignored": cache.ignored}}

    def job_latency_histogram(self) -> dict[str, Any] | None:
        """The workers' job latency histogram (see JobBoard.latency_histogram); None without workers."""
        return self._board.latency_histogram() if self._board is not None else None

    @while_running
    def dump_state(self) -> dict[str, Any]:
        """Everything, JSON-serialisable: regions, allocations, pools, index summaries, readers."""
        inst, publisher = self._require()
        current, superseded = publisher.snapshot()
        dims = []
        reader = self.reader()
        for pub in sorted(current, key=lambda p: p.dimension_id):
            d = pub.as_dict()
            try:
                ids = reader.layer_ids(pub.dimension_id)
                d["layers"] = {"count": len(ids), "min_id": min(ids, default=None),
                               "max_id": max(ids, default=None)}
            except DimensionNotFound:
                d["layers"] = None
            dims.append(d)
        return {
            "name": self.name,
            "coordinator_pid": os.getpid(),
            "started_at": self.started_at,
            "memory": inst.table.stats().as_dict(),
            "dimensions": dims,
            "superseded": [p.as_dict() for p in superseded],
            "capacity": self._require_capacity().dump(),
            "allocations": inst.table.live_allocations(),
            "readers": publisher.registry.live(),
            "pins": [p.as_dict() for p in list_pins(inst.control, inst.table.block_sizes)],
            "workers": {"pids": self._pool.pids(), "deaths": self._pool.deaths} if self._pool else None,
            "jobs": self._board.counts() if self._board else None,
            "proto_dimensions": [{"dimension_id": p.dimension_id, "name": p.name, "layers": len(p),
                                  "nbytes": p.nbytes()} for p in self._protos.values()],
            "load": {"loaded": {str(k): v for k, v in self.load_report.loaded.items()},
                     "skipped": [{"file": f, "reason": r} for f, r in self.load_report.skipped]},
        }


def _store_on_disk() -> bool:
    """Whether the region store may be used: not where its copies would be RAM kept after stop."""
    folder = store_dir().parent
    if memory_backed(folder):
        if folder not in _told_memory_backed:
            _told_memory_backed.add(folder)
            logger.info("region files are copied into shared memory, not served from the region store: the runtime "
                        "folder {} is in memory (tmpfs), where the store's copies would hold RAM after every "
                        "coordinator stopped; set SHMPOOL_RUNTIME_DIR to a folder on disk to serve them by mapping "
                        "(docs/operations.md, The region store)", folder)
        return False
    return True


_told_memory_backed: set[Path] = set()
