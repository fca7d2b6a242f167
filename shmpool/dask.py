"""shmpool as the per-host shared-memory data plane of a Dask cluster (extra ``shmpool[dask]``).

Lifetime model first: every host runs exactly one shmpool instance per plugin, owned by a host
daemon (``shmpool.coordinator.dask_host``) that no Dask process owns. The first Nanny on a host starts it
detached; every Nanny holds a *lease* on it (an open Unix-socket connection); it stops, unlinking
everything, a couple of seconds after the last lease closes, which happens when every Nanny of the
host closed (cluster shutdown, plugin removed) or died (the kernel closes a dead process's
sockets). A worker crash or restart closes no lease, so the host keeps serving; the other workers
never notice. Each worker process attaches one Reader, lazily, in :func:`reader`.

    >>> client.register_plugin(ShmpoolPlugin("catalog", data_dir="/data/regions",
    ...                                      store_dir="/shared/shmpool-store"))
    >>> generation = shmpool.dask.publish(client, 40, "prices", {1: b"...", 2: b"..."})
    >>> client.submit(lambda: shmpool.dask.reader().load_layer_context(40, 1).generation).result()

Why a NannyPlugin: a Nanny outlives its worker (it restarts it after a crash), its ``setup`` runs
before its worker process starts (so the host is caught up before any task runs there), and its
``teardown`` runs when it closes. A WorkerPlugin lives and dies with the worker: the very event
(a worker crash) that must not disturb the host would tear it down. Workers without a Nanny
(``--no-nanny``, ``processes=False``) are not served.

Where the truth lives: the *store*, a folder of region files shared by every host (NFS, a
ReadWriteMany volume; on one machine any folder). :func:`publish` writes generation G of a
dimension there as ``d<dim>.g<G>.region`` once every host has agreed to take it (all hosts or
none: shmpool._dask_publish), and has each host's instance serve it under that same G. A host
that starts later, or whose daemon restarted, publishes the newest file of every dimension
before it reports ready, and rescans the store every second. See docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import glob
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from dask.sizeof import sizeof
from distributed import Lock
from distributed.diagnostics.plugin import NannyPlugin
from distributed.protocol import dask_deserialize, dask_serialize
from loguru import logger

from . import _dask_host as host
from ._dask_publish import publish
from .data.context import ContextCollection, LoadedContext, MissingStep
from .errors import AttachError, InvalidArgument
from .substrate.ids import as_id
from .substrate.limits import DEFAULT_LIMIT
from .substrate.names import runtime_dir
from .data.reader import Reader, attach
from .data.region_builder import RegionBuilder, write_atomically

__all__ = ["ShmpoolPlugin", "reader", "publish", "host_key", "resource", "HOST_ENV", "RESOURCE_UNITS"]

HOST_ENV = host.HOST_ENV
host_key = host.host_key
RESOURCE_UNITS = 1_000_000  # a placement resource marks where data is, it does not limit concurrency
ATTACH_TIMEOUT = 30.0       # seconds a task waits for its host's instance to come (back) up
LIVENESS_INTERVAL = 0.1     # seconds between checks that a worker's cached instance still has its daemon


def resource(dimension_id: int) -> str:
    """The worker resource that marks hosts serving ``dimension_id`` under placement:
    ``client.submit(fn, resources={shmpool.dask.resource(7): 1})`` runs only there."""
    return f"shmpool:{as_id(dimension_id, 'dimension_id')}"


# ----------------------------------------------------------------- the plugin (in each Nanny)

@dataclass
class _NannyState:
    instance: str
    config: host.HostConfig
    lease: host.Lease
    watcher: threading.Thread
    closing: threading.Event


class ShmpoolPlugin(NannyPlugin):
    """One shmpool instance per host, serving the same region files to every worker there.

    Register with ``client.register_plugin(ShmpoolPlugin(name, ...))`` (Nannies that start later
    get it too). ``data_dir`` holds the region files every host serves (None: the built-in
    sample); ``store_dir`` the published generations, shared by all hosts (default: a folder in
    the runtime directory, right for one machine only). ``memory_limit`` caps each host's
    instance. ``placement`` = ``{dimension_id: [host key, ...]}`` serves those dimensions only on
    those hosts, whose workers get the resource :func:`resource` (register the plugin before those
    workers start: a Nanny sets its worker's resources when it launches it). ``linger`` is how
    long a host's instance outlives its last Nanny. Setup blocks until the host's instance is up
    and caught up; it raises AttachError (quoting the daemon's log) if that fails.
    """

    idempotent = True

    def __init__(self, name: str, *, data_dir: str | os.PathLike | None = None,
                 store_dir: str | os.PathLike | None = None, memory_limit: int = DEFAULT_LIMIT,
                 placement: Mapping[int, Iterable[str]] | None = None, linger: float = 2.0,
                 start_timeout: float = host.START_TIMEOUT) -> None:
        self.name = host.check_plugin_name(name)  # Dask's key for the plugin, too
        if data_dir is not None and not Path(data_dir).is_dir():
            raise InvalidArgument(argument="data_dir", value=str(data_dir), reason="is not a folder")
        self.data_dir = None if data_dir is None else str(Path(data_dir).resolve())
        self.store_dir = str(Path(store_dir).resolve()) if store_dir is not None else None
        if type(memory_limit) is not int or memory_limit <= 0:
            raise InvalidArgument(argument="memory_limit", value=memory_limit, reason="must be a positive int (bytes)")
        self.memory_limit = memory_limit
        self.placement = {as_id(d, "dimension_id"): tuple(str(h) for h in hosts)
                          for d, hosts in (placement or {}).items()}
        if linger < 0 or start_timeout <= 0:
            raise InvalidArgument(argument="linger", value=(linger, start_timeout), reason="must be >= 0 and > 0")
        self.linger = float(linger)
        self.start_timeout = float(start_timeout)
        self._states: dict[int, _NannyState] = {}  # per Nanny: LocalCluster runs several in one process

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_states"] = {}  # sockets and threads stay where they were made
        return state

    def config_for(self, host_name: str) -> host.HostConfig:
        store = self.store_dir or str(runtime_dir() / f"{self.name}.dask-store")
        elsewhere = tuple(sorted(d for d, hosts in self.placement.items() if host_name not in hosts))
        return host.HostConfig(plugin=self.name, data_dir=self.data_dir, store_dir=store,
                               memory_limit=self.memory_limit, linger=self.linger, elsewhere=elsewhere)

    async def setup(self, nanny) -> None:
        host_name = host_key(nanny.env)
        instance = host.instance_name(self.name, host_name)
        config = self.config_for(host_name)
        Path(config.store_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        # Blocking file locks and a process start: off the Nanny's event loop.
        lease = await asyncio.to_thread(self._open_lease, instance, config)
        closing = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(lease, config, closing), daemon=True,
                                   name=f"shmpool-dask-lease-{instance}")
        self._states[id(nanny)] = _NannyState(instance, config, lease, watcher, closing)
        watcher.start()
        if self.placement:
            served = {resource(d): RESOURCE_UNITS for d, hosts in self.placement.items() if host_name in hosts}
            nanny.resources = {**(nanny.resources or {}), **served}
        await nanny.scheduler.set_metadata(keys=[host.METADATA_KEY, self.name],
                                           value={"store_dir": config.store_dir})
        logger.info("Nanny {} leases shmpool instance {!r} of host {!r}", nanny.address, instance, host_name)

    def teardown(self, nanny) -> None:
        state = self._states.pop(id(nanny), None)
        if state is None:
            return
        state.closing.set()
        state.lease.close()  # the daemon stops ``linger`` s after the host's last lease goes
        state.watcher.join(5)

    def _open_lease(self, instance: str, config: host.HostConfig) -> host.Lease:
        deadline = time.monotonic() + self.start_timeout
        while True:
            host.ensure_host(instance, config, self.start_timeout)
            try:
                return host.Lease(instance).open()
            except AttachError:
                # It was stopping (lingered out) between ready and our connect: start it again.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _watch(self, lease: host.Lease, config: host.HostConfig, closing: threading.Event) -> None:
        """Restart the host's daemon if it dies under a live lease (it catches up at start)."""
        while not closing.is_set():
            sock = lease.sock
            try:
                data = sock.recv(1) if sock is not None else b""
            except OSError:
                data = b""
            if closing.is_set():
                return
            if data:
                continue
            logger.warning("shmpool instance {!r} went away under a lease: restarting it", lease.instance)
            lease.close()
            try:
                fresh = self._open_lease(lease.instance, config)
            except Exception:
                logger.exception("could not restart shmpool instance {!r}; retrying", lease.instance)
                time.sleep(1.0)
                continue
            if closing.is_set():  # torn down while we reconnected: this lease must not outlive it
                fresh.close()
                return
            lease.sock = fresh.sock


# ----------------------------------------------------------------- in tasks (each worker process)

_readers: dict[str, Reader] = {}
_readers_lock = threading.Lock()


def reader(name: str | None = None, *, timeout: float = ATTACH_TIMEOUT) -> Reader:
    """The Reader attached to this host's instance, made once per worker process and reused.

    ``name`` is the plugin's name; None picks the only ShmpoolPlugin serving this host. Lookups
    on it are zero-copy views into the host's shared memory. If the host's instance is being
    restarted (its daemon died), waits up to ``timeout`` seconds for it to come back caught up.
    Raises AttachError if no plugin serves this host, or none comes up in time; InvalidArgument
    if several do and ``name`` is None. Thread-safe.
    """
    instance = _instance_for(name)
    with _readers_lock:
        current = _readers.get(instance)
        if current is not None and _usable(instance, current):
            return current
        if current is not None:
            current.close()
            del _readers[instance]
        fresh = _attach(instance, timeout)
        _readers[instance] = fresh
        return fresh


_checked: dict[str, float] = {}  # instance -> time.monotonic() of its last daemon liveness check


def _usable(instance: str, r: Reader) -> bool:
    """Still the live instance: not closed, not stopping, and its daemon alive.

    The daemon's pid is checked at most every LIVENESS_INTERVAL: kill(0) releases the GIL, and
    in a busy worker getting it back cost more than the task's 20 lookups (bench_dask). A daemon
    SIGKILLed in between leaves its last generations mapped and intact, and its successor needs
    longer than that to catch up, so no task reads anything the new one would not serve.
    """
    if r.closed:
        return False
    inst = r.instance
    if not inst.is_running():
        return False
    now = time.monotonic()
    if now - _checked.get(instance, 0.0) < LIVENESS_INTERVAL:
        return True
    _checked[instance] = now
    # Not kill(pid, 0): a SIGKILLed daemon stays a zombie until the Nanny that started it reaps
    # it, and a zombie passes kill(0), so workers kept reading the dead daemon's last
    # generations after its successor had published newer ones (test_dask, once in a few runs).
    return inst.coordinator_alive()


def _attach(instance: str, timeout: float) -> Reader:
    deadline = time.monotonic() + timeout
    while True:
        if host.ready_pid(instance) is not None:
            try:
                return attach(instance)
            except AttachError:
                pass  # stopping or restarting: wait for the next one
        if time.monotonic() > deadline:
            raise AttachError(name=instance, reason=f"its Dask host daemon was not ready within {timeout:g} s")
        time.sleep(0.02)


_instances: dict[tuple[str | None, str], str] = {}  # (plugin name, host key) -> instance name


def _instance_for(name: str | None) -> str:
    # Resolved once per process: reader() runs in every task, and the lookup behind name=None
    # lists the runtime folder (measured: 220 us of a 20-layer task's 234 us before the cache).
    here = host_key()
    found = _instances.get((name, here))
    if found is None:
        found = _instances[(name, here)] = _resolve(name, here)
    return found


def _resolve(name: str | None, here: str) -> str:
    if name is not None:
        return host.instance_name(name, here)
    suffix = host.instance_name("x", here)[1:]  # "-<digest>"
    found = sorted({Path(p).name.split(".dask.", 1)[0]
                    for p in glob.glob(str(runtime_dir() / f"*{suffix}.dask.spawn.lock"))})
    if len(found) > 1:
        live = [i for i in found if host.ready_pid(i) is not None]
        found = live if live else found
    if not found:
        raise AttachError(name=f"*{suffix}", reason=f"no ShmpoolPlugin serves host {here!r}; register one "
                                                    "with client.register_plugin(ShmpoolPlugin(name, ...))")
    if len(found) > 1:
        raise InvalidArgument(argument="name", value=None,
                              reason=f"several shmpool plugins serve host {here!r} ({', '.join(found)}): name one")
    return found[0]


# ----------------------------------------------------------------- results leaving a worker

class _Detached:
    """Metadata of a context whose bytes were copied out of shared memory (row is always 0)."""

    __slots__ = ("generation", "name", "_frequency", "_keywords", "_is_text", "_crc32")

    def __init__(self, meta: dict) -> None:
        self.generation = int(meta["generation"])
        self.name = str(meta["name"])
        self._frequency = float(meta["frequency"])
        self._keywords = tuple(str(k) for k in meta["keywords"])
        self._is_text = bool(meta["is_text"])
        self._crc32 = int(meta["crc32"])

    def frequency(self, _row: int) -> float:
        return self._frequency

    def keywords(self, _row: int) -> tuple[str, ...]:
        return self._keywords

    def is_text(self, _row: int) -> bool:
        return self._is_text

    def crc32(self, _row: int) -> int:
        return self._crc32


def _meta(ctx: LoadedContext) -> dict:
    return {"dimension_id": ctx.dimension_id, "layer_id": ctx.layer_id, "generation": ctx.generation,
            "name": ctx.dimension_name, "frequency": ctx.frequency, "keywords": list(ctx.keywords),
            "is_text": ctx.is_text, "crc32": ctx.crc32}


def _rebuilt(meta: dict, frame) -> LoadedContext:
    content = memoryview(frame).cast("B").toreadonly()
    return LoadedContext(int(meta["dimension_id"]), int(meta["layer_id"]), content, _Detached(meta), 0)


# The content goes out as a frame: the comm writes it straight from shared memory (the frame
# keeps the generation pinned until it is sent) and nothing is pickled. The receiver gets a
# context over its own copy of the bytes, with the same metadata and verify().
@dask_serialize.register(LoadedContext)
def _serialize_context(ctx: LoadedContext) -> tuple[dict, list]:
    return {"context": _meta(ctx)}, [ctx.content]


@dask_deserialize.register(LoadedContext)
def _deserialize_context(header: dict, frames: list) -> LoadedContext:
    return _rebuilt(header["context"], frames[0])


@dask_serialize.register(ContextCollection)
def _serialize_collection(coll: ContextCollection) -> tuple[dict, list]:
    missing = [[m.position, m.dimension_id, m.layer_id, m.reason] for m in coll.missing]
    return {"contexts": [_meta(c) for c in coll.contexts], "missing": missing}, [c.content for c in coll.contexts]


@dask_deserialize.register(ContextCollection)
def _deserialize_collection(header: dict, frames: list) -> ContextCollection:
    contexts = [_rebuilt(meta, frame) for meta, frame in zip(header["contexts"], frames)]
    missing = [MissingStep(int(p), int(d), int(l), str(r)) for p, d, l, r in header["missing"]]
    return ContextCollection(contexts, missing)


@sizeof.register(LoadedContext)
def _sizeof_context(ctx: LoadedContext) -> int:
    return len(ctx.content) + 200  # what it costs once it leaves the host (a copy)


@sizeof.register(ContextCollection)
def _sizeof_collection(coll: ContextCollection) -> int:
    return coll.total_bytes + 200 * (len(coll.contexts) + len(coll.missing) + 1)
