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
request, or on SIGTERM/SIGINT.

    python -m shmpool.coordinator.dask_host INSTANCE CONFIG_JSON
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from loguru import logger

from shmpool import _dask_host as host
from shmpool.errors import DimensionNotFound, GenerationNotNewer, ShmPoolError
from shmpool.substrate.names import runtime_dir
from shmpool.data.region import Region

from .coordinator import Coordinator
from .loading import REGION_SUFFIX, sample_directory

__all__ = ["HostDaemon", "main"]

STORE_RESCAN = 1.0   # seconds between looks at the store for publications we were not told of
ACCEPT_POLL = 0.1    # seconds between checks of the lease count and the stop flag


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
        self._leases = 0
        self._lease_lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._listener: socket.socket | None = None

    # ----------------------------------------------------------------- lifecycle

    def run(self) -> None:
        sock_path = host.socket_path(self.instance)
        self.coord.start()  # InstanceExists if another daemon owns the name: we exit, it serves
        try:
            self._load_base()
            self.catch_up()
            if sock_path.exists():  # a dead predecessor's: we hold the instance lock, so nobody listens
                sock_path.unlink()
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(str(sock_path))
            os.chmod(sock_path, 0o600)
            self._listener.listen(64)
            self._listener.settimeout(ACCEPT_POLL)
            host.write_ready(self.instance)
            logger.info("Dask host instance {!r} ready: generations {}", self.instance, self.generations())
            self._serve()
        finally:
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
            logger.info("Dask host instance {!r} stopped", self.instance)

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def _serve(self) -> None:
        idle_since = time.monotonic()  # the starter opens its lease right after the ready file
        next_scan = time.monotonic() + STORE_RESCAN
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                conn = None
            if conn is not None:
                threading.Thread(target=self._handle, args=(conn,), daemon=True,
                                 name=f"dask-host-{self.instance}-conn").start()
            now = time.monotonic()
            with self._lease_lock:
                leased = self._leases > 0
            if leased:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since > self.config.linger:
                logger.info("no Nanny of {!r} holds a lease for {:g} s: stopping", self.instance, self.config.linger)
                break
            if now >= next_scan:
                try:
                    self.catch_up()
                except Exception:  # the next round retries; the daemon must outlive a bad file
                    logger.exception("store rescan of {!r} failed", self.instance)
                next_scan = now + STORE_RESCAN

    # ----------------------------------------------------------------- content

    def generations(self) -> dict[int, int]:
        return dict(self.coord.stats()["generations"])

    def _load_base(self) -> None:
        folder = Path(self.config.data_dir) if self.config.data_dir else sample_directory(0)
        stored = host.store_generations(self.config.store_dir) if self.config.store_dir else {}
        for path in sorted(p for p in folder.iterdir() if p.suffix == REGION_SUFFIX):
            try:
                with Region.open(path, verify_checksums=False) as region:
                    dim = region.dimension_id
                if dim in stored or not self.config.serves_dimension(dim):
                    continue  # newer in the store (catch_up publishes it), or placed elsewhere
                self.coord.publish_region_file(path)
            except ShmPoolError as exc:
                logger.warning("skipping region file {}: {}", path, exc)

    def catch_up(self) -> None:
        """Publish the store's newest generation of each dimension we serve and are behind on."""
        if not self.config.store_dir:
            return
        for dim, (generation, path) in sorted(host.store_generations(self.config.store_dir).items()):
            if self.config.serves_dimension(dim):
                self.publish(dim, generation, path)

    def publish(self, dimension_id: int, generation: int, path: str | os.PathLike) -> int:
        """Serve ``path`` as ``generation`` of ``dimension_id``; idempotent for the current one."""
        with self._publish_lock:
            current = self.generations().get(dimension_id, 0)
            if current == generation:
                return generation
            if current > generation:
                raise GenerationNotNewer(dimension_id=dimension_id, generation=generation, current=current)
            with Region.open(path, verify_checksums=False) as region:
                if region.dimension_id != dimension_id:
                    raise DimensionNotFound(dimension_id=dimension_id, available=[region.dimension_id])
            published = self.coord.publish_region_file(path, generation=generation)
            logger.info("{!r} serves dimension {} generation {} from {}", self.instance, dimension_id,
                        published, path)
            return published

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
                self._hold_lease(stream)
                return
            try:
                reply = self._answer(message)
            except Exception as exc:
                reply = host.error_reply(exc)
            try:
                conn.sendall(json.dumps(reply, default=str).encode() + b"\n")
            except OSError as exc:
                logger.debug("reply to {!r} lost: {}", message.get("op"), exc)

    def _hold_lease(self, stream) -> None:
        with self._lease_lock:
            self._leases += 1
        try:
            while stream.readline():  # nothing is sent on a lease: this returns at EOF
                pass
        except OSError:
            pass
        finally:
            with self._lease_lock:
                self._leases -= 1

    def _answer(self, message: dict) -> dict:
        op = message.get("op")
        if op == "publish":
            dim, generation = int(message["dimension_id"]), int(message["generation"])
            if not self.config.serves_dimension(dim):
                return {"generation": None, "serves": False}
            return {"generation": self.publish(dim, generation, message["file"]), "serves": True}
        if op == "generations":
            return {"generations": {str(d): g for d, g in self.generations().items()}, "pid": os.getpid()}
        if op == "stats":
            return {"stats": self.coord.stats()}
        if op == "stop":
            self.request_stop()
            return {"stopping": True}
        raise ValueError(f"unknown request {op!r}")


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
    daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
