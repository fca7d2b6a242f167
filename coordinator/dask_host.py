"""The Dask host daemon: the one process per (plugin, host) that owns that host's instance.

Started detached (own session) by the first Nanny of a host that needs it (shmpool._dask_host.
ensure_host), so no Dask process's death takes the host's data down. At start it serves the
plugin's region files (``data_dir``, or the sample), then catches up to the cluster: the newest
generation of every dimension in the store folder, published under that same generation number;
only then does it write its ready file, so a Nanny that waited for it lets its worker start on
current data. It rescans the store every STORE_RESCAN seconds, so a publication it was not told
about (it started while a publish was between writing the file and telling the hosts) still
reaches it.

It stops (unlinking everything) ``linger`` seconds after its last lease closed (every Nanny of
the host closed, or died: the kernel closes a dead process's connections), on a ``stop``
request, or on SIGTERM/SIGINT, and exits 0. It also stops when its instance's names were removed
from /dev/shm under it (systemd-logind's RemoveIPC, an ``rm``): its Coordinator notices and stops
itself, and the daemon follows at once, withdraws its ready file and socket, leaves why in
``<instance>.dask.stopped`` (quoted by a reader() that waits in vain) and exits 1. Its
leases end with it, so the Nannies' lease watchers start a fresh daemon, which catches up from
the store (docs/operations.md, "Names removed under a running instance").

    python -m shmpool.coordinator.dask_host INSTANCE CONFIG_JSON
"""

from __future__ import annotations

import enum
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from shmpool.substrate._log import logger

from shmpool import _dask_host as host
from shmpool.data import layer_index
from shmpool.data.region import Region, align
from shmpool.errors import DimensionNotFound, GenerationNotNewer, ShmPoolError
from shmpool.substrate.alloc import AllocationTable, Handle
from shmpool.substrate.names import runtime_dir
from shmpool.substrate.removal import REMOVEIPC_ADVICE

from .coordinator import Coordinator
from .loading import REGION_SUFFIX, sample_directory

__all__ = ["HostDaemon", "Stopped", "main"]

STORE_RESCAN = 1.0   # seconds between looks at the store for publications we were not told of
ACCEPT_POLL = 0.1    # seconds between checks of the lease count, the stop flag and reservations
RETRY_FIRST = 2.0    # seconds before a store generation that failed to publish is tried again ...
RETRY_MOST = 60.0    # ... doubling up to this: memory may free up, a bad file will not mend


class Stopped(enum.Enum):
    """Why :meth:`HostDaemon.run` returned; :func:`main` exits with its ``exit_status``."""
    LINGERED = "no lease for linger seconds"
    REQUESTED = "a stop request, SIGTERM or SIGINT"
    NAMES_LOST = "its instance's names were removed from /dev/shm"

    @property
    def exit_status(self) -> int:
        # A failure, so that a supervisor that restarts on failure sees one; the Nannies start a
        # fresh daemon either way (their leases end with this process).
        return 1 if self is Stopped.NAMES_LOST else 0


@dataclass
class _Reservation:
    """Room held for a prepared publication (:meth:`HostDaemon.prepare`) until it is published,
    aborted, or ``expires`` (time.monotonic()): a publisher that died between its prepare and
    its commit must not keep the room."""
    generation: int
    handle: Handle
    expires: float


class _RegionFacts(NamedTuple):
    """What the daemon checks of a region file before it holds room for or publishes it."""
    dimension_id: int
    name: str
    layer_count: int
    nbytes: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> "_RegionFacts":
        """Its header, structure checked (RegionFormatError), content checksums not (publishing checks them)."""
        with Region.open(path, verify_checksums=False) as region:
            # getattr: Region declares these in __slots__ only, which a type checker cannot see.
            return cls(*(getattr(region, f) for f in cls._fields))

    def allocation(self) -> int:
        """Bytes Publisher.place allocates to publish it: the layer index, then the region."""
        return align(layer_index.index_nbytes(len(self.name.encode()), self.layer_count)) + self.nbytes


@dataclass
class _Failure:
    """A store generation this host could not publish: reported once, retried with back-off."""
    message: str
    retry_at: float
    delay: float


class HostDaemon:
    """Owns instance ``instance`` for one host of a Dask cluster; :meth:`run` blocks until it stops."""

    def __init__(self, instance: str, config: host.HostConfig) -> None:
        self.instance = instance
        self.config = config
        # An empty folder: the daemon loads the plugin's files itself, filtered by placement and
        # skipping dimensions the store holds newer generations of.
        self._empty = runtime_dir() / f"{instance}.dask.empty"
        self._empty.mkdir(mode=0o700, exist_ok=True)
        self.coord = Coordinator(instance, data_dir=self._empty, memory_limit=config.memory_limit, workers=0,
                                 max_readers=config.max_readers)
        self._stop = threading.Event()
        self._leases: set[socket.socket] = set()  # a lease is a connection held open
        self._lease_lock = threading.Lock()
        self._publish_lock = threading.Lock()  # guards publishing, _reserved and _failures
        self._reserved: dict[int, _Reservation] = {}   # dimension id -> room held for its next publish
        self._failures: dict[tuple[int, int], _Failure] = {}  # (dimension, generation) -> why not
        self._listener: socket.socket | None = None

    # ----------------------------------------------------------------- lifecycle

    def run(self) -> Stopped:
        """Serve until one of the reasons in :class:`Stopped`; returns it, everything unlinked."""
        sock_path = host.socket_path(self.instance)
        self.coord.start()  # InstanceExists if another daemon owns the name: we exit, it serves
        stopped: Stopped | None = None
        try:
            # The store first: what it cannot serve (a generation too large for this host's
            # limit) falls back to the plugin's file, so a bad store never keeps a host down.
            self.catch_up()
            self._load_base()
            if sock_path.exists():  # a dead predecessor's: we hold the instance lock, so nobody listens
                sock_path.unlink()
            listener = self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(sock_path))
            os.chmod(sock_path, 0o600)
            listener.listen(64)
            listener.settimeout(ACCEPT_POLL)
            host.write_ready(self.instance)
            logger.info("Dask host instance {!r} ready: generations {}", self.instance, self.generations())
            stopped = self._serve(listener)
            return stopped
        finally:
            if stopped is Stopped.NAMES_LOST:
                # Refuse connections now (a connect to a listener nobody accepts on would wait
                # CALL_TIMEOUT), then wait for the Coordinator's own stop: it lets go of the
                # instance's name lock last, and the successor that ensure_host starts as soon as
                # the ready file is gone must find it free, not exit with InstanceExists.
                listener.close()
                try:
                    self.coord.stop()
                except Exception:  # the withdrawal below must happen all the same
                    logger.exception("stopping the coordinator of {!r} after its names were lost failed",
                                     self.instance)
                try:
                    host.write_stopped(self.instance, self._names_lost_reason())
                except OSError as exc:  # logind may have removed the runtime folder too (/run/user/UID)
                    logger.warning("could not leave why {!r} stopped in the runtime folder: {}", self.instance, exc)
            for path in (host.ready_path(self.instance), sock_path):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
            if self._listener is not None:
                self._listener.close()
            self.coord.stop()
            try:
                self._empty.rmdir()
            except OSError as exc:
                logger.debug("keeping {}: {}", self._empty, exc)
            logger.info("Dask host instance {!r} stopped: {}", self.instance,
                        "an error (above)" if stopped is None else stopped.value)

    def _names_lost_reason(self) -> str:
        lost = self.coord.names_lost
        gone = lost.describe() if lost is not None else "its names"
        return f"its instance's names were removed from /dev/shm under it: {gone}. Likely cause: {REMOVEIPC_ADVICE}"

    def request_stop(self, *_args: object) -> None:
        self._stop.set()

    def _serve(self, listener: socket.socket) -> Stopped:
        idle_since: float | None = time.monotonic()  # the starter opens its lease right after the ready file
        next_scan = time.monotonic() + STORE_RESCAN
        while not self._stop.is_set():
            try:
                conn: socket.socket | None = listener.accept()[0]
            except TimeoutError:
                conn = None
            if conn is not None:
                threading.Thread(target=self._handle, args=(conn,), daemon=True,
                                 name=f"dask-host-{self.instance}-conn").start()
            lost = self.coord.names_lost
            if lost is not None:
                # Its Coordinator stops itself (its ERROR says why and what to do): nothing can
                # attach to this instance any more, so a ready file and a socket left up would
                # tell every Nanny and worker of the host that it is served.
                logger.error("Dask host instance {!r} lost its shared-memory names ({} of {} removed; the "
                             "ERROR above says why): stopping, exit status 1; a Nanny holding a lease "
                             "starts a fresh daemon", self.instance, len(lost.removed) + len(lost.replaced),
                             lost.watched)
                return Stopped.NAMES_LOST
            now = time.monotonic()
            with self._lease_lock:
                leased = bool(self._leases)
            if leased:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since > self.config.linger:
                logger.info("no Nanny of {!r} holds a lease for {:g} s: stopping", self.instance, self.config.linger)
                return Stopped.LINGERED
            self._expire_reservations(now)
            # A publish in progress (it holds the lock, copying a region) defers the rescan rather
            # than stall the accept loop behind it.
            if now >= next_scan and not self._publish_lock.locked():
                try:
                    self.catch_up()
                except Exception as exc:  # the next round retries; the daemon must outlive a bad store
                    if self.coord.names_lost is None:
                        logger.exception("store rescan of {!r} failed", self.instance)
                    else:  # its Coordinator stopped under the rescan: the next turn stops us
                        logger.debug("store rescan of {!r} after its names were lost: {}", self.instance, exc)
                next_scan = now + STORE_RESCAN
        return Stopped.REQUESTED

    # ----------------------------------------------------------------- content

    def generations(self) -> dict[int, int]:
        return {int(d): int(g) for d, g in self.coord.stats()["generations"].items()}

    def _load_base(self) -> None:
        """The plugin's region files, for the dimensions the store gave us nothing of."""
        folder = Path(self.config.data_dir) if self.config.data_dir else sample_directory(0)
        served = self.generations()
        for path in sorted(p for p in folder.iterdir() if p.suffix == REGION_SUFFIX):
            try:
                dim = _RegionFacts.of(path).dimension_id
                if dim in served or not self.config.serves_dimension(dim):
                    continue  # served from the store already, or placed elsewhere
                self.coord.publish_region_file(path)
            except ShmPoolError as exc:
                logger.warning("skipping region file {}: {}", path, exc)

    def catch_up(self) -> None:
        """Publish the store's newest generation of each dimension we serve and are behind on.

        A generation that fails (too large for this host's memory limit, a bad file) is logged
        once, in one line, and retried with back-off: never a traceback a second."""
        if not self.config.store_dir:
            return
        current = self.generations()
        now = time.monotonic()
        for dim, (generation, path) in sorted(host.store_generations(self.config.store_dir).items()):
            if not self.config.serves_dimension(dim) or current.get(dim, 0) >= generation:
                continue
            with self._publish_lock:
                failed = self._failures.get((dim, generation))
            if failed is not None and now < failed.retry_at:
                continue
            try:
                self.publish(dim, generation, path)
            except ShmPoolError as exc:
                self._failed(dim, generation, exc, failed)

    def _failed(self, dim: int, generation: int, exc: ShmPoolError, before: _Failure | None) -> None:
        delay = RETRY_FIRST if before is None else min(before.delay * 2, RETRY_MOST)
        with self._publish_lock:
            self._failures[(dim, generation)] = _Failure(str(exc), time.monotonic() + delay, delay)
        if before is None:  # once per generation: the message varies (bytes in use) from try to try
            logger.error("{!r} cannot serve generation {} of dimension {} from the store (retrying every "
                         "{:g} s at most): {}: {}", self.instance, generation, dim, RETRY_MOST,
                         type(exc).__name__, exc)
        else:
            logger.debug("{!r}: generation {} of dimension {} still fails: {}", self.instance, generation, dim, exc)

    def prepare(self, dimension_id: int, generation: int, path: str | os.PathLike[str], ttl: float) -> int:
        """Phase one of a cluster publish: check that ``path`` can become ``generation`` here and
        hold the room it needs for ``ttl`` seconds; returns the bytes held.

        Raises what publishing it would (GenerationNotNewer, RegionFormatError, DimensionNotFound,
        LimitExceeded, AllocationFailed), so a publication no host can take is refused on every
        host before any serves it. Room held by an earlier prepare of the dimension is let go.
        """
        with self._publish_lock:
            self._drop_reservation(dimension_id)
            current = self.generations().get(dimension_id, 0)
            if current >= generation:
                raise GenerationNotNewer(dimension_id=dimension_id, generation=generation, current=current)
            facts = _RegionFacts.of(path)
            if facts.dimension_id != dimension_id:
                raise DimensionNotFound(dimension_id=dimension_id, available=[facts.dimension_id])
            nbytes = facts.allocation()
            handle = self._table().allocate(nbytes)
            self._reserved[dimension_id] = _Reservation(generation, handle, time.monotonic() + ttl)
            return nbytes

    def abort(self, dimension_id: int, generation: int) -> bool:
        """Let go of the room a prepare of ``generation`` holds; False if it holds none."""
        with self._publish_lock:
            held = self._reserved.get(dimension_id)
            if held is None or held.generation != generation:
                return False
            self._drop_reservation(dimension_id)
            return True

    def publish(self, dimension_id: int, generation: int, path: str | os.PathLike[str]) -> int:
        """Serve ``path`` as ``generation`` of ``dimension_id``; idempotent for the current one."""
        with self._publish_lock:
            current = self.generations().get(dimension_id, 0)
            held = self._reserved.get(dimension_id)
            if held is not None and held.generation <= max(current, generation):
                # Its room is ours to use now (freed just before the allocation that takes it).
                self._drop_reservation(dimension_id)
            if current == generation:
                return generation
            if current > generation:
                raise GenerationNotNewer(dimension_id=dimension_id, generation=generation, current=current)
            facts = _RegionFacts.of(path)
            if facts.dimension_id != dimension_id:
                raise DimensionNotFound(dimension_id=dimension_id, available=[facts.dimension_id])
            published = self.coord.publish_region_file(path, generation=generation)
            for key in [k for k in self._failures if k[0] == dimension_id and k[1] <= published]:
                del self._failures[key]
            logger.info("{!r} serves dimension {} generation {} from {}", self.instance, dimension_id,
                        published, path)
            return published

    def _table(self) -> AllocationTable:
        # The owner's allocation table: a reservation is an allocation like the one publishing
        # makes (it may grow a pool, which only the owner can). Coordinator has no public
        # reservation call; this daemon is its owner process and the only allocator here.
        return self.coord._require()[0].table

    def _drop_reservation(self, dimension_id: int) -> None:
        held = self._reserved.pop(dimension_id, None)
        if held is not None:
            self._table().free(held.handle)

    def _expire_reservations(self, now: float) -> None:
        # Never waits: the accept loop must not stall behind a publish copying a large region
        # (it holds the lock); the next turn of the loop looks again.
        if not self._publish_lock.acquire(blocking=False):
            return
        try:
            for dim in [d for d, r in self._reserved.items() if r.expires <= now]:
                logger.warning("{!r}: the publish of dimension {} generation {} was prepared and never "
                               "committed nor aborted (its publisher died?): letting its room go",
                               self.instance, dim, self._reserved[dim].generation)
                self._drop_reservation(dim)
        finally:
            self._publish_lock.release()

    # ----------------------------------------------------------------- requests

    def _handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            try:
                message = host.receive(stream)
            except (OSError, ValueError) as exc:
                logger.debug("bad request to {!r}: {}", self.instance, exc)
                return
            if message is None:
                return
            if message.get("op") == "lease":
                self._hold_lease(conn, stream)
                return
            try:
                reply = self._answer(message)
            except Exception as exc:
                reply = host.error_reply(exc)
            try:
                conn.sendall(json.dumps(reply, default=str).encode() + b"\n")
            except OSError as exc:
                logger.debug("reply to {!r} lost: {}", message.get("op"), exc)

    def _hold_lease(self, conn: socket.socket, stream: BinaryIO) -> None:
        with self._lease_lock:
            self._leases.add(conn)
        try:
            while stream.readline():  # nothing is sent on a lease: this returns at EOF
                pass
        except OSError:
            pass
        finally:
            with self._lease_lock:
                self._leases.discard(conn)

    def _live_leases(self) -> int:
        """Leases whose holder has not closed them. A lease closed a moment ago may not have been
        noticed by its thread yet: a registration that follows an unregistration at once must
        not be refused for it (the socket's EOF is there to see even so)."""
        with self._lease_lock:
            held = list(self._leases)
        return sum(1 for conn in held if not _closed(conn))

    def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        if op in ("prepare", "publish", "abort"):
            dim, generation = int(message["dimension_id"]), int(message["generation"])
            if not self.config.serves_dimension(dim):
                return {"generation": None, "serves": False}
            if op == "prepare":
                held = self.prepare(dim, generation, message["file"], float(message["ttl"]))
                return {"generation": generation, "serves": True, "reserved": held}
            if op == "abort":
                return {"generation": generation, "serves": True, "aborted": self.abort(dim, generation)}
            return {"generation": self.publish(dim, generation, message["file"]), "serves": True}
        if op == "config":
            return {"config": self.config.to_json(), "leases": self._live_leases()}
        if op == "generations":
            return {"generations": {str(d): g for d, g in self.generations().items()}, "pid": os.getpid()}
        if op == "stats":
            return {"stats": self.coord.stats()}
        if op == "stop":
            self.request_stop()
            return {"stopping": True}
        raise ValueError(f"unknown request {op!r}")


def _closed(conn: socket.socket) -> bool:
    """Whether the peer of ``conn`` has closed it (EOF waiting to be read), without reading."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    instance, config = argv[0], host.HostConfig.from_json(argv[1])
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("SHMPOOL_DASK_LOG_LEVEL", "INFO"))
    logger.enable("shmpool")
    logger.enable("coordinator")
    daemon = HostDaemon(instance, config)
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    return daemon.run().exit_status


if __name__ == "__main__":
    sys.exit(main())

