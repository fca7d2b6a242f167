"""The coordinator: the one process that owns an instance's shared memory.

It creates the segments, loads region files, crystallizes proto-dimensions, frees superseded
generations once no reader pins them, and unlinks everything at stop. One coordinator per
instance name, enforced with an flock'd lock file: the kernel releases it if the coordinator
dies, so a newcomer can take over (after sweeping the dead one's leftovers).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import posix_ipc
from filelock import FileLock, Timeout
from loguru import logger

from shmpool.codec import encode_error
from shmpool.context import LoadedContext
from shmpool import platform
from shmpool.errors import (AllocationFailed, AttachError, DimensionNotFound, InstanceExists, InvalidLayer, LimitExceeded,
                            LockTimeout, ShmPoolError)
from shmpool.ids import as_id
from shmpool.spin import SPIN_ENV, spin_seconds
from shmpool.jobboard import JobBoard
from shmpool.jobs_layout import JobsLayout
from shmpool.instance import DEFAULT_POOLS, PoolSpec, SharedInstance
from shmpool.layout import STATE_STOPPING, W
from shmpool.limits import DEFAULT_LIMIT, Thresholds
from shmpool.names import raise_if_foreign, runtime_dir, validate_name
from shmpool.pins import list_pins
from shmpool.reader import Reader
from workers.config import WorkerConfig
from workers.jobs import POLICY_ENV, JobPolicy
from workers.pool import WorkerPool

from .capacity import CapacityManager, CapacityPolicy
from .loading import REGION_SUFFIX, LoadReport, load_region_files, sample_directory
from .proto import ProtoDimension
from .publisher import MAX_PIN_AGE, Placement, Publisher

__all__ = ["Coordinator"]

RECLAIM_INTERVAL = 0.02   # superseded regions are checked this often
ROOM_WAIT = 1.0  # seconds crystallize waits for evicted regions to be freed before retrying
DEAD_SWEEP_INTERVAL = 1.0  # allocations of dead processes are reclaimed this often
HEAL_INTERVAL = 0.1  # the job board's supervision round: dead clients, invariants, wake-ups


class Coordinator:
    """Owns instance ``name``: ``start()`` makes every dimension readable by other processes.

    With ``data_dir=None`` it serves the built-in 14-dimension sample. Usable as a context
    manager (start on enter, stop on exit). Its workers run the built-in jobs, the functions
    named in ``jobs`` (``{name: function or "module:function"}``) and ``"module:function"``
    of modules in ``job_modules`` (prefixes); any other job name fails with UnknownJob.
    ``worker_init`` (a module-level function or ``"module:function"``) runs once in each worker
    as ``worker_init(*worker_init_args)`` before it serves; ``job_timeout`` (seconds) is the
    execution limit of jobs that set none, past which the worker is killed and replaced and the
    job fails with JobTimeout. Workers get this process's ``sys.path``.
    """

    def __init__(self, name: str, *, data_dir: str | os.PathLike | None = None,
                 memory_limit: int = DEFAULT_LIMIT, pools: Sequence[PoolSpec] | None = None,
                 thresholds: Thresholds = Thresholds(), sample_seed: int = 0,
                 max_dimensions: int = 256, max_readers: int = 512, workers: int | None = None,
                 job_slots: int = 256, job_payload: int = 64 * 1024, max_clients: int = 256,
                 drain_timeout: float = 5.0, compress_cold: bool = False, huge_pages: bool = False,
                 capacity: CapacityPolicy | None = None, max_pin_age: float = MAX_PIN_AGE,
                 jobs: Mapping[str, Callable[..., Any] | str] | None = None,
                 job_modules: Iterable[str] = (), worker_init: Callable[..., Any] | str | None = None,
                 worker_init_args: Sequence[Any] = (), job_timeout: float | None = None,
                 worker_spin_us: float | str | None = None) -> None:
        self.name = validate_name(name)
        # Checked here, where a bad entry is the caller's mistake, not in every worker later.
        self.job_policy = JobPolicy.build(jobs, job_modules)
        self.worker_config = WorkerConfig.build(init=worker_init, init_args=worker_init_args,
                                                job_timeout=job_timeout)
        # Workers busy-wait this long for the next request before sleeping (shmpool.spin).
        self.worker_spin = spin_seconds(worker_spin_us)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.memory_limit = memory_limit
        self.pools = tuple(pools) if pools is not None else DEFAULT_POOLS
        self.thresholds = thresholds
        self.sample_seed = sample_seed
        self._max_dimensions = max_dimensions
        self._max_readers = max_readers
        self.worker_count = (os.cpu_count() or 1) if workers is None else workers
        self._job_config = (job_slots, max_clients, job_payload)
        self.drain_timeout = drain_timeout
        self.max_pin_age = max_pin_age
        if capacity is None:
            capacity = CapacityPolicy(compress_cold=compress_cold, huge_pages=huge_pages)
        elif compress_cold or huge_pages:
            capacity = dataclasses.replace(capacity, compress_cold=capacity.compress_cold or compress_cold,
                                           huge_pages=capacity.huge_pages or huge_pages)
        self.capacity_policy = capacity
        self._capacity: CapacityManager | None = None
        self._board: JobBoard | None = None
        self._pool: WorkerPool | None = None
        self._file_lock = FileLock(str(runtime_dir() / f"{name}.coordinator.lock"))
        self._inst: SharedInstance | None = None
        self._publisher: Publisher | None = None
        self._reader: Reader | None = None
        self._protos: dict[int, ProtoDimension] = {}
        self._protos_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._reaper: threading.Thread | None = None
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
            raise RuntimeError(f"coordinator {self.name!r} is already started")
        t0 = time.perf_counter()
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise FileNotFoundError(f"data directory {self.data_dir} does not exist")
        try:
            self._file_lock.acquire(timeout=0)
        except Timeout:
            raise InstanceExists(name=self.name, owner_pid=self._live_owner_pid()) from None
        try:
            self._check_shm_space()
            self._inst = SharedInstance.create(
                self.name, pools=self.pools, memory_limit=self.memory_limit, thresholds=self.thresholds,
                max_dimensions=self._max_dimensions, max_readers=self._max_readers,
                growth=self.capacity_policy.pool_growth, huge_pages=self.capacity_policy.huge_pages)
            self._publisher = Publisher(self._inst, max_pin_age=self.max_pin_age)
            if self.worker_count > 0:
                # Before the data: the board is fixed-size and reserved whole, so on a small
                # /dev/shm it gets its room and the region files take what is left (those that
                # do not fit are skipped with a warning) rather than the other way round.
                self._board = self._create_board(*self._job_config)
            spill = self.capacity_policy.spill_dir or runtime_dir() / f"{self.name}.spill"
            self._capacity = CapacityManager(self._inst, self._publisher, self.capacity_policy, Path(spill))
            self._capacity.remove_spills()  # a crashed run's; we hold the name's lock, nobody needs them
            folder = self.data_dir if self.data_dir is not None else sample_directory(self.sample_seed)
            paths = sorted(p for p in folder.iterdir() if p.suffix == REGION_SUFFIX)
            self.load_report = load_region_files(self._publisher, paths)
            self.load_seconds = time.perf_counter() - t0  # what the < 100 ms start-up target covers
            if self._board is not None:
                self._pool = WorkerPool(self.name, self._board, self.worker_count,
                                        env={POLICY_ENV: self.job_policy.to_json(),
                                             SPIN_ENV: str(self.worker_spin * 1e6)},
                                        config=self.worker_config)
                self._pool.start()
            self._reaper = threading.Thread(target=self._reap_loop, name=f"shmpool-{self.name}-reaper",
                                            daemon=True)
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
        logger.info("coordinator {!r} started in {:.1f} ms: {} dimensions, {} bytes, {} files skipped",
                    self.name, self.startup_seconds * 1e3, len(self.load_report.loaded),
                    self.load_report.bytes_loaded, len(self.load_report.skipped))
        return self

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
        except OSError as exc:  # its semaphores are files in /dev/shm too
            if platform.is_full(exc):
                raise platform.full_error(self._board_bytes(), f"the job board of {self.name!r}") from None
            raise

    def stop(self) -> None:
        """Drain jobs, stop workers, unmap and unlink every shared object (idempotent).

        New submissions are refused at once; jobs already queued or running get up to
        ``drain_timeout`` seconds to finish; whatever is still queued then is answered with
        AttachError ("coordinator stopped") rather than run. Then workers get SIGTERM.
        """
        if self._inst is None:
            return
        if self._board is not None:
            self._drain()
        self._inst.control.words[W.STATE] = STATE_STOPPING
        self._teardown()
        logger.info("coordinator {!r} stopped", self.name)

    def _drain(self) -> None:
        board = self._board
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
        if self._reaper is not None:
            self._inst.wake_coordinator()
            self._reaper.join(5)
            self._reaper = None
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        if self._board is not None:
            self._board.unlink()
            self._board.close()
            self._board = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._capacity is not None:
            self._capacity.remove_spills()  # evicted dimensions cannot come back once we are gone
            self._capacity = None
        if self._publisher is not None:
            self._publisher.wakeups.close()  # waiters see STATE stopping now, not a slice later
        if self._inst is not None:
            self._inst.destroy()
            self._inst = None
        self._publisher = None
        if self._file_lock.is_locked:
            self._file_lock.release()

    def __enter__(self) -> "Coordinator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._inst is not None

    def _live_owner_pid(self) -> int | None:
        try:
            probe = SharedInstance.attach(self.name)
        except ShmPoolError:
            return None
        try:
            return int(probe.control.words[W.COORDINATOR_PID])
        finally:
            probe.close()

    def _free_stranded_spills(self) -> None:
        stranded, self._board.stranded_spills = self._board.stranded_spills, []
        for spill in stranded:
            try:
                self._inst.table.free(self._inst.table.handle_at(*spill))
            except ShmPoolError as exc:  # its new owner (a client that read it) freed it already
                logger.debug("stranded spilled result {} already freed: {}", spill, exc)

    def _reap_loop(self) -> None:
        last_sweep = last_heal = time.monotonic()
        while True:
            # Woken early by readers that need an evicted dimension back (and by stop()).
            self._inst.wait_for_wake(RECLAIM_INTERVAL)
            if self._stop_event.is_set():
                break
            try:
                if self._pool is not None:
                    self._pool.supervise()
                    if time.monotonic() - last_heal >= HEAL_INTERVAL:
                        # One supervision round: dead clients settled, invariants restored,
                        # swallowed wake-ups re-sent (docs/architecture.md, job board invariants).
                        try:
                            self._board.sweep_dead_clients()
                            self._board.supervise()
                        except LockTimeout as exc:  # a stopped holder: the next round retries
                            logger.warning("job board supervision of {!r} postponed: {}", self.name, exc)
                        last_heal = time.monotonic()
                    self._free_stranded_spills()
                if self._reader is not None:
                    self._reader.drop_stale()  # our own reader must not pin what it no longer uses
                self._capacity.tick()
                self._publisher.wakeups.resend()  # a wake-up lost to store reordering: late, not lost
                self._publisher.reclaim()
                if time.monotonic() - last_sweep >= DEAD_SWEEP_INTERVAL:
                    self._inst.table.reclaim_dead()
                    self._publisher.registry.reap_dead()  # keeps readers_attached honest when idle
                    last_sweep = time.monotonic()
            except Exception:  # the reaper must outlive any one bad round
                logger.exception("reclaim round of coordinator {!r} failed", self.name)

    def _require(self) -> tuple[SharedInstance, Publisher]:
        if self._inst is None or self._publisher is None:
            raise RuntimeError(f"coordinator {self.name!r} is not running")
        return self._inst, self._publisher

    # ----------------------------------------------------------------- proto-dimensions

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

    def crystallize(self, dimension_id: int, *, keep: bool = False) -> int:
        """Write the proto-dimension once into shared memory and publish it; returns the generation.

        Readers switch to the new generation on their next lookup; contexts they already hold
        stay valid. An existing dimension of the same id is replaced (its old generation is
        freed when no reader pins it). The proto-dimension is consumed unless ``keep``.
        """
        inst, publisher = self._require()
        proto = self.proto(dimension_id)
        dimension_id = proto.dimension_id
        builder = proto.builder
        nbytes = builder.nbytes()
        place = functools.partial(publisher.place, nbytes, builder.write_into,
                                  source=f"crystallized proto-dimension {dimension_id}",
                                  expect_dimension=dimension_id,
                                  built=(builder.dimension_id, builder.name, len(builder)))
        try:
            generation = place()
        except (LimitExceeded, AllocationFailed) as exc:
            # Make room the way the 85% rule would (for a full or fragmented pool too), wait for
            # the evicted regions to be freed, then try once more; a second refusal stands.
            words = inst.control.words
            refuse_at = int(words[W.MEMORY_LIMIT]) * int(words[W.REFUSE_PERMILLE]) // 1000
            hopeless = nbytes > refuse_at or (isinstance(exc, AllocationFailed) and "larger than any pool" in exc.reason)
            if hopeless or not self.capacity_policy.evict or not self._capacity.make_room(refuse_at - 2 * nbytes):
                raise exc from None
            deadline = time.monotonic() + ROOM_WAIT  # evicted regions go once unpinned, after GRACE
            while publisher.pending_free() and time.monotonic() < deadline:
                time.sleep(0.005)
                publisher.reclaim()
            generation = place()
        if not keep:
            with self._protos_lock:
                self._protos.pop(dimension_id, None)
        return generation

    def crystallize_many(self, dimension_ids: Iterable[int], *, keep: bool = False) -> dict[int, int]:
        """Publish the proto-dimensions ``dimension_ids`` together, as one atomic step.

        Returns {dimension id: new generation}. Every region is written and checked before
        anything is published, and all of them become visible at one instant: a reader's
        ``snapshot()`` or ``load_contexts`` sees all the new generations or none. All or
        nothing: on any failure (DimensionNotFound for an id without a proto-dimension,
        InvalidArgument for a repeated id, LimitExceeded, AllocationFailed, DirectoryFull)
        nothing is published, nothing stays allocated and every proto-dimension is kept. The
        protos are consumed unless ``keep``. Unlike :meth:`crystallize`, a full memory limit is
        not met by evicting first: free room, then call again.
        """
        _, publisher = self._require()
        protos = [self.proto(d) for d in dimension_ids]
        placements = [Placement(p.builder.nbytes(), p.builder.write_into,
                                f"crystallized proto-dimension {p.dimension_id}", p.dimension_id,
                                (p.builder.dimension_id, p.builder.name, len(p.builder))) for p in protos]
        generations = publisher.place_many(placements)
        if not keep:
            with self._protos_lock:
                for p in protos:
                    self._protos.pop(p.dimension_id, None)
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

    def reclaim(self) -> int:
        """Free unpinned superseded generations now (the reaper does this every 20 ms)."""
        return self._require()[1].reclaim()

    # ----------------------------------------------------------------- monitoring

    def stats(self) -> dict:
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
            "capacity": self._capacity.stats(),
            "generations": {p.dimension_id: p.generation for p in current},
            "superseded_pending": len(superseded),
            "pins": [p.as_dict() for p in list_pins(inst.control, inst.table.block_sizes)],
            "proto_dimensions": len(self._protos),
            "startup_ms": (self.startup_seconds or 0) * 1e3,  # including worker start
            "load_ms": (self.load_seconds or 0) * 1e3,  # segments created, every dimension readable
        })
        if self._board is not None:
            out["jobs"] = self._board.counts()
            out["workers"] = {"count": self.worker_count, "pids": self._pool.pids() if self._pool else [],
                              "deaths": list(self._pool.deaths) if self._pool else []}
        return out

    def job_latency_histogram(self) -> dict | None:
        """The workers' job latency histogram (see JobBoard.latency_histogram); None without workers."""
        return self._board.latency_histogram() if self._board is not None else None

    def dump_state(self) -> dict:
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
            "capacity": self._capacity.dump(),
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
