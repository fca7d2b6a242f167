"""shmpool as the per-host shared-memory data plane of a Dask cluster (extra ``shmpool[dask]``).

Lifetime model first: every host runs exactly one shmpool instance per plugin, owned by a host
daemon (``shmpool.coordinator.dask_host``) that no Dask process owns. The first Nanny on a host starts it
detached; every Nanny holds a *lease* on it (an open Unix-socket connection); it stops, unlinking
everything, a couple of seconds after the last lease closes, which happens when every Nanny of the
host closed (cluster shutdown, plugin removed) or died (the kernel closes a dead process's
sockets). A worker crash or restart closes no lease, so the host keeps serving; the other workers
never notice. A daemon whose instance's names are removed from /dev/shm (systemd-logind's
RemoveIPC) stops with exit status 1; its leases end with it, and the Nannies start a fresh one.
Each worker process attaches one Reader, lazily, in :func:`reader`.

    >>> client.register_plugin(ShmpoolPlugin("catalog", data_dir="/data/regions",
    ...                                      store_dir="/shared/shmpool-store"))
    >>> generation = shmpool.dask.publish(client, 40, "prices", {1: b"...", 2: b"..."})
    >>> client.submit(lambda: shmpool.dask.reader().load_layer_context(40, 1).generation).result()
    >>> with shmpool.dask.pin(client, [40]) as pinned:   # one generation for a whole map
    ...     client.gather(client.map(lambda i: pinned.load_layer_context(40, i).generation, [1, 2]))

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
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from distributed.diagnostics.plugin import NannyPlugin
from .substrate._log import logger

from . import _dask_host as host
from . import _dask_serialize  # noqa: F401  (registers how contexts leave a worker)
from ._dask_pin import Pin, pin
from ._dask_publish import publish
from .errors import AttachError, InvalidArgument
from .substrate.fork_safe import ForkSafeLock
from .substrate.ids import as_id
from .substrate.layout import STATE_RUNNING, W
from .substrate.limits import DEFAULT_LIMIT
from .substrate.names import runtime_dir
from .substrate.timeouts import check_timeout
from .data.reader import Reader, attach

__all__ = ["ShmpoolPlugin", "reader", "publish", "pin", "Pin", "host_key", "resource", "HOST_ENV", "RESOURCE_UNITS"]

HOST_ENV = host.HOST_ENV
host_key = host.host_key
RESOURCE_UNITS = 1_000_000  # a placement resource marks where data is, it does not limit concurrency
ATTACH_TIMEOUT = 30.0       # seconds a task waits for its host's instance to come (back) up
LIVENESS_INTERVAL = 0.1     # seconds a worker's reader() answer stands before the folder and daemon are checked
_RUNTIME_ENV = "SHMPOOL_RUNTIME_DIR"


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


# (id(nanny), plugin name) -> its lease. Per process, not per plugin object: a registration of
# the same name replaces the plugin object in the Nanny (Dask calls no teardown on the old one),
# and whichever object is torn down last must close the lease the first one opened.
_nanny_states: dict[tuple[int, str], _NannyState] = {}


def _metadata(config: host.HostConfig) -> dict[str, Any]:
    """What a Nanny's setup tells the scheduler of its plugin (publish reads it)."""
    return {"store_dir": config.store_dir}


def plugin_metadata(nanny: Any) -> dict[str, dict[str, Any]]:
    """{plugin name: metadata} of the ShmpoolPlugins ``nanny`` runs (publish asks the Nannies
    for it when the scheduler's copy is gone: client.restart() clears it)."""
    return {name: _metadata(state.config) for (nanny_id, name), state in list(_nanny_states.items())
            if nanny_id == id(nanny)}


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

    Registering a name again with the same arguments changes nothing. With other arguments
    (another ``memory_limit``, ...) ``register_plugin`` raises InvalidArgument naming what
    differs, and the hosts keep serving the first configuration: unregister it first
    (``client.unregister_worker_plugin(name, nanny=True)``; its instances stop ``linger`` s
    later) or use another name. Only workers with a Nanny are served: with
    ``LocalCluster(processes=False)`` or ``dask worker --no-nanny``, Dask has no Nanny to run
    this plugin in, ``register_plugin`` does nothing, and :func:`reader` and :func:`publish`
    raise errors that say so.
    """

    # Not idempotent: Dask would drop a second registration before any Nanny sees it, so one
    # with another memory_limit was ignored without a word; setup tells the two cases apart.
    idempotent = False

    def __init__(self, name: str, *, data_dir: str | os.PathLike[str] | None = None,
                 store_dir: str | os.PathLike[str] | None = None, memory_limit: int = DEFAULT_LIMIT,
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

    def config_for(self, host_name: str) -> host.HostConfig:
        store = self.store_dir or str(runtime_dir() / f"{self.name}.dask-store")
        elsewhere = tuple(sorted(d for d, hosts in self.placement.items() if host_name not in hosts))
        return host.HostConfig(plugin=self.name, data_dir=self.data_dir, store_dir=store,
                               memory_limit=self.memory_limit, linger=self.linger, elsewhere=elsewhere)

    async def setup(self, nanny: Any) -> None:
        host_name = host_key(nanny.env)
        instance = host.instance_name(self.name, host_name)
        config = self.config_for(host_name)
        held = _nanny_states.get((id(nanny), self.name))
        if held is not None:
            if held.config != config:
                raise _conflict(self.name, held.config, config)
            return  # the same registration again: this Nanny holds its lease already
        Path(config.store_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        # Blocking file locks and a process start: off the Nanny's event loop.
        lease = await asyncio.to_thread(self._open_lease, instance, config)
        closing = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(lease, config, closing), daemon=True,
                                   name=f"shmpool-dask-lease-{instance}")
        _nanny_states[(id(nanny), self.name)] = _NannyState(instance, config, lease, watcher, closing)
        watcher.start()
        if self.placement:
            served = {resource(d): RESOURCE_UNITS for d, hosts in self.placement.items() if host_name in hosts}
            nanny.resources = {**(nanny.resources or {}), **served}
            process = getattr(nanny, "process", None)
            if process is not None and isinstance(getattr(process, "worker_kwargs", None), dict):
                # A Nanny reads its resources only when it builds its worker process, and a
                # restart reuses that process's arguments: without this, a worker running
                # before this registration never got them, restarted or not.
                process.worker_kwargs["resources"] = dict(nanny.resources)
        await nanny.scheduler.set_metadata(keys=[host.METADATA_KEY, self.name], value=_metadata(config))
        # A worker's reader() looks at the runtime folder at most every LIVENESS_INTERVAL (its
        # fast path makes no system call). The daemon's ready file is there already; returning
        # no sooner than that interval later means a task submitted after register_plugin
        # returned finds this plugin (reader(None) refuses: several serve the host).
        await asyncio.sleep(LIVENESS_INTERVAL)
        logger.info("Nanny {} leases shmpool instance {!r} of host {!r}", nanny.address, instance, host_name)

    def teardown(self, nanny: Any) -> None:
        state = _nanny_states.pop((id(nanny), self.name), None)
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
                running = host.call(instance, {"op": "config"})
                serving = host.HostConfig.from_json(running["config"])
                if serving != config:
                    if running["leases"]:
                        raise _conflict(self.name, serving, config)
                    # Unregistered a moment ago and lingering: it would stop by itself; stop
                    # it now and start the one this registration describes.
                    host.stop_host(instance, self.start_timeout)
                    continue
                return host.Lease(instance).open()
            except AttachError:
                # It was stopping (lingered out) between ready and our connect: start it again.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _watch(self, lease: host.Lease, config: host.HostConfig, closing: threading.Event) -> None:
        """Restart the host's daemon if it dies under a live lease (it catches up at start)."""
        failures = 0
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
            if not failures:
                why = host.last_failure(lease.instance)  # e.g. its names were removed from /dev/shm
                logger.warning("shmpool instance {!r} went away under a lease{}: restarting it", lease.instance,
                               f" ({why})" if why else "")
            lease.close()
            try:
                fresh = self._open_lease(lease.instance, config)
            except Exception as exc:
                # The traceback once; then one line per try, further apart each time.
                if not failures:
                    logger.exception("could not restart shmpool instance {!r}; retrying", lease.instance)
                else:
                    logger.warning("shmpool instance {!r} still cannot start: {}", lease.instance, exc)
                failures += 1
                closing.wait(min(2.0 ** failures, 30.0))
                continue
            failures = 0
            if closing.is_set():  # torn down while we reconnected: this lease must not outlive it
                fresh.close()
                return
            lease.sock = fresh.sock


def _conflict(name: str, serving: host.HostConfig, wanted: host.HostConfig) -> InvalidArgument:
    changed = ", ".join(f"{f}={getattr(serving, f)!r} (this registration: {getattr(wanted, f)!r})"
                        for f in serving.__dataclass_fields__ if getattr(serving, f) != getattr(wanted, f))
    return InvalidArgument(argument="ShmpoolPlugin", value=name,
                           reason=f"a ShmpoolPlugin of this name already serves this host with other settings: "
                                  f"{changed}; unregister it first (client.unregister_worker_plugin({name!r}, "
                                  f"nanny=True)) or register under another name")


# ----------------------------------------------------------------- in tasks (each worker process)

_readers: dict[str, Reader] = {}
_readers_lock = ForkSafeLock()  # made afresh in a forked child (shmpool/substrate/fork_safe.py)
_STATE = int(W.STATE)  # a plain int: indexing a memoryview with an IntEnum costs an __index__ call


class _Checked:
    """A reader() answer and how long it stands without a look at the runtime folder or the daemon.

    The checked path reads SHMPOOL_DASK_HOST and SHMPOOL_RUNTIME_DIR afresh, so a change of
    either in a running process (tests do it) is seen once the answer is due a check."""

    __slots__ = ("reader", "words", "until")

    def __init__(self, found: Reader, until: float) -> None:
        self.reader = found
        self.words = found.instance.control.words_mv  # the instance's STATE word, read on every call
        self.until = until


_answers: dict[str | None, _Checked] = {}  # plugin name (None: the only one) -> the last checked answer


def reader(name: str | None = None, *, timeout: float | None = ATTACH_TIMEOUT) -> Reader:
    """The Reader attached to this host's instance, made once per worker process and reused.

    ``name`` is the plugin's name; None picks the only ShmpoolPlugin serving this host. Lookups
    on it are zero-copy views into the host's shared memory. If the host's instance is being
    restarted (its daemon died), waits up to ``timeout`` seconds for it to come back caught up.
    Raises AttachError if no plugin serves this host, or none comes up in time (naming why the
    last daemon stopped, if it stopped with a failure such as its names removed); InvalidArgument
    if several do and ``name`` is None, or for a NaN ``timeout`` (InvalidArgumentType for one
    that is no number; None: wait as long as it takes). Thread-safe. Takes no lock and makes no system call
    while its last answer is under LIVENESS_INTERVAL old; a change of SHMPOOL_DASK_HOST or
    SHMPOOL_RUNTIME_DIR in a running process is seen once it is older.
    """
    held = _answers.get(name)
    # The task's path: a dict lookup, a clock read (vDSO, no syscall), the instance's STATE
    # word and the reader's closed flag. No lock, and no system call: a stat or a /proc read
    # releases the GIL, and in a busy worker the event loop thread then keeps it; one os.stat
    # cost 8 us of a task's 36, and reading the two environment variables through os.environ
    # another ~10 us of cold Python frames (bench_dask). What it leaves to the checked path
    # below, at most LIVENESS_INTERVAL later: a SIGKILLed daemon (its successor needs longer
    # than that to come up caught up) and a plugin registered or removed on this host
    # (ShmpoolPlugin.setup returns no sooner than LIVENESS_INTERVAL after its daemon is ready,
    # so a task started after register_plugin returned sees it). A daemon that stops cleanly
    # says so in STATE at once.
    if held is not None and time.monotonic() < held.until:
        try:
            if held.words[_STATE] == STATE_RUNNING and not held.reader.closed:
                return held.reader
        except ValueError:  # the reader was closed and its views released under us
            pass
    return _reader_checked(name, timeout)


def _reader_checked(name: str | None, timeout: float | None) -> Reader:
    """reader() with every check: the runtime folder (name None), the reader, the daemon's process."""
    # Checked before the lock: a NaN deadline never passed, and the wait held _readers_lock for
    # ever, so every later reader() of the process (every task of the worker) waited behind it.
    timeout = check_timeout(timeout)
    checked_at = time.monotonic()  # what the checks below see was true at this instant, or later
    instance = _instance_for(name)
    with _readers_lock:
        current = _readers.get(instance)
        if current is not None and _usable(current):
            found = current
        else:
            if current is not None:
                current.close()
                del _readers[instance]
            found = _readers[instance] = _attach(instance, timeout)
    _answers[name] = _Checked(found, checked_at + LIVENESS_INTERVAL)
    return found


def _usable(r: Reader) -> bool:
    """Still the live instance: not closed, not stopping, and its daemon alive.

    Called at most once per LIVENESS_INTERVAL per answer of reader() (its fast path holds the
    rest of the time). Not kill(pid, 0): a SIGKILLed daemon stays a zombie until the Nanny that
    started it reaps it, and a zombie passes kill(0), so workers kept reading the dead daemon's
    last generations after its successor had published newer ones (test_dask, once in a few runs).
    """
    return not r.closed and r.instance.coordinator_alive()


def _attach(instance: str, timeout: float | None) -> Reader:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if host.ready_pid(instance) is not None:
            try:
                return attach(instance)
            except AttachError:
                pass  # stopping or restarting: wait for the next one
        if deadline is not None and time.monotonic() > deadline:
            why = host.last_failure(instance)  # its names were removed, say, and nobody started another
            raise AttachError(name=instance, reason=f"its Dask host daemon was not ready within {timeout:g} s"
                                                    + (f"; {why}" if why else ""))
        time.sleep(0.02)


_named: dict[tuple[str, str], str] = {}                 # (plugin name, host key) -> instance name
_only: dict[str, tuple[int, str]] = {}                  # host key -> (runtime folder mtime, the one instance)


def _instance_for(name: str | None) -> str:
    # reader()'s checked path (at most every LIVENESS_INTERVAL per worker); listing the runtime
    # folder behind name=None cost 220 us of a 20-layer task's 234 us when it ran per task. So
    # the answer is kept while the folder's mtime stands still: a plugin starting or stopping on
    # this host writes or removes its ready file there, which moves it (one stat, ~1 us), and
    # the next check looks again.
    here = host_key()
    if name is not None:
        found = _named.get((name, here))
        if found is None:
            found = _named[(name, here)] = host.instance_name(name, here)
        return found
    stamp = os.stat(_runtime_folder()).st_mtime_ns
    cached = _only.get(here)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    only = _resolve(here)
    _only[here] = (stamp, only)
    return only


_folders: dict[str | None, str] = {}  # SHMPOOL_RUNTIME_DIR -> the runtime folder it resolved to


def _runtime_folder() -> str:
    # runtime_dir() checks the folder's owner and mode each call (12 us); its identity does not
    # change while the environment does not, so a check pays one stat (2 us), not that.
    key = os.environ.get(_RUNTIME_ENV)
    found = _folders.get(key)
    if found is None:
        found = _folders[key] = str(runtime_dir())
    return found


def _resolve(here: str) -> str:
    """The one live plugin instance of host ``here``: its daemon's ready file names a live pid.

    Not spawn.lock files: filelock leaves them behind, and a host that ran nine plugins in a
    day has nine, named as if they served."""
    found = host.live_instances(here)
    if not found:
        raise AttachError(name=host.instance_name("x", here)[1:], reason=(
            f"no ShmpoolPlugin serves host {here!r}: register one with client.register_plugin("
            f"ShmpoolPlugin(name, ...)); {host.NO_NANNY_HINT}"))
    if len(found) > 1:
        raise InvalidArgument(argument="name", value=None,
                              reason=f"several shmpool plugins serve host {here!r} ({', '.join(found)}): name one")
    return found[0]
