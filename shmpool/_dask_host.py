"""The per-host instance of a Dask cluster: its names, its files, and how to reach or start it.

One host daemon (``python -m shmpool.coordinator.dask_host``) per (plugin name, host key) owns a shmpool
instance; every Dask process on the host finds it through files in the runtime folder:

    <instance>.dask.sock        Unix socket: JSON-line requests (publish, generations, lease, stop)
    <instance>.dask.ready       JSON {"pid", "start"}, written once the instance is caught up
    <instance>.dask.spawn.lock  flock held by whoever starts the daemon, so only one does
    <instance>.dask.log         the daemon's stderr, quoted when it fails to start
    <instance>.dask.stopped     JSON {"pid", "reason"}: why its last daemon stopped with a failure
                                (its names were removed), quoted by a reader() that waits in vain;
                                removed when the next daemon is ready

The runtime folder is ours alone (0700, shmpool.substrate.names.runtime_dir), so whoever can connect to
the socket is us. Requests and replies are JSON, never pickle; an error reply carries the job
codec's error payload (shmpool.jobs.codec), so errors have one wire format. Nothing here imports Dask or the
coordinator: this module serves shmpool.dask (in Nannies and workers) and the daemon alike.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping

from filelock import FileLock, Timeout
from .substrate._log import logger

from .substrate._proc import is_alive, start_token
from .errors import AttachError, InvalidArgument, RemoteTraceback
from .jobs import codec
from .substrate.names import runtime_dir, validate_name

__all__ = ["HOST_ENV", "HostConfig", "instance_name", "host_key", "ensure_host", "stop_host", "call", "connect",
           "ready_pid", "last_failure", "live_instances", "store_file", "store_generations", "store_entries",
           "pending_file", "prune_store", "discard_pending"]

HOST_ENV = "SHMPOOL_DASK_HOST"  # the host key; simulated hosts on one machine each set their own
START_TIMEOUT = 60.0  # seconds a Nanny waits for its host's daemon to be up and caught up
CALL_TIMEOUT = 60.0   # a publication of a large region file is a copy of it, at memory speed
_PLUGIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,38}$")  # + "-" + 8 hex = 48, the name limit
_STORE_RE = re.compile(r"^d(\d+)\.g(\d+)\.region$")
METADATA_KEY = "shmpool-dask"  # scheduler metadata: {plugin name: {"store_dir": ...}}, set by each Nanny
NO_NANNY_HINT = ("ShmpoolPlugin runs in Dask Nannies: a cluster without them (LocalCluster(processes=False), "
                 "dask worker --no-nanny) has no host instance to serve it")
PIN_PREFIX = ".pin-"  # a pin's file in the store (shmpool._dask_pin): the generations it holds
PENDING_SUFFIX = ".pending"  # a publication not yet committed (pending_file)
_SOCKET_MAX = 107  # sun_path is 108 bytes on Linux, including the NUL


@dataclass(frozen=True)
class HostConfig:
    """What every host's daemon of one plugin serves; sent to the daemon as JSON."""
    plugin: str
    data_dir: str | None = None          # region files every host loads at start (None: the sample)
    store_dir: str = ""                  # published region files: the cluster's source of truth
    memory_limit: int = 1 << 30
    linger: float = 2.0                  # seconds without a lease before the daemon stops
    elsewhere: tuple[int, ...] = ()      # dimension ids placed on other hosts only (not served here)
    max_readers: int = 512

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "HostConfig":
        raw = json.loads(text)
        raw["elsewhere"] = tuple(int(d) for d in raw.get("elsewhere", ()))
        return cls(**raw)

    def serves_dimension(self, dimension_id: int) -> bool:
        return dimension_id not in self.elsewhere


def check_plugin_name(name: str) -> str:
    if not isinstance(name, str) or not _PLUGIN_RE.match(name):
        raise InvalidArgument(argument="name", value=name,
                              reason="use 1-39 characters from A-Z a-z 0-9 _ -, starting with a letter "
                                     "or digit (the host instance is named <name>-<8 hex of the host>)")
    return name


def host_key(env: Mapping[str, str] | None = None) -> str:
    """This process's host: ``SHMPOOL_DASK_HOST`` from ``env`` or the environment, else the hostname."""
    for source in (env or {}, os.environ):
        value = source.get(HOST_ENV)
        if value:
            return str(value)
    return socket.gethostname()


def instance_name(plugin: str, host: str) -> str:
    digest = hashlib.blake2s(host.encode(), digest_size=4).hexdigest()
    return validate_name(f"{check_plugin_name(plugin)}-{digest}")


def _path(instance: str, kind: str) -> Path:
    return runtime_dir() / f"{instance}.dask.{kind}"


def socket_path(instance: str) -> Path:
    path = _path(instance, "sock")
    if len(os.fsencode(path)) > _SOCKET_MAX:
        raise InvalidArgument(argument="SHMPOOL_RUNTIME_DIR", value=str(path.parent),
                              reason=f"the socket path {path} is longer than {_SOCKET_MAX} bytes; "
                                     "point SHMPOOL_RUNTIME_DIR at a shorter folder")
    return path


def ready_path(instance: str) -> Path:
    return _path(instance, "ready")


def log_path(instance: str) -> Path:
    return _path(instance, "log")


def ready_pid(instance: str) -> int | None:
    """The pid of the live, caught-up daemon of ``instance``, or None."""
    info = _ready_info(instance)
    if info is None:
        return None
    pid, start = info
    return pid if pid and is_alive(pid, start) else None


def live_instances(host: str) -> list[str]:
    """The instances of ``host`` whose daemon is up and caught up (a live pid in its ready file)."""
    suffix = instance_name("x", host)[1:]  # "-<digest of the host>"
    ready = sorted(p.name[:-len(".dask.ready")] for p in runtime_dir().glob(f"*{suffix}.dask.ready"))
    return [i for i in ready if ready_pid(i) is not None]


def _ready_info(instance: str) -> tuple[int, int] | None:
    try:
        info = json.loads(ready_path(instance).read_text())
        return int(info.get("pid", 0)), int(info.get("start", 0))
    except (OSError, ValueError, AttributeError):
        return None


def stop_host(instance: str, timeout: float = START_TIMEOUT) -> None:
    """Ask the daemon of ``instance`` to stop now and wait until its process is gone (blocking).

    Its leases do not keep it: the caller knows there are none it wants kept."""
    info = _ready_info(instance)
    try:
        call(instance, {"op": "stop"})
    except AttachError as exc:  # stopping already
        logger.debug("stopping {!r}: {}", instance, exc)
    deadline = time.monotonic() + timeout
    while info is not None and is_alive(*info):
        if time.monotonic() > deadline:
            raise AttachError(name=instance, reason=f"its Dask host daemon (pid {info[0]}) did not stop within "
                                                    f"{timeout:g} s")
        time.sleep(0.01)


def write_ready(instance: str) -> None:
    _write_json(ready_path(instance), {"pid": os.getpid(), "start": start_token(os.getpid())})
    stopped_path(instance).unlink(missing_ok=True)  # a predecessor's failure is history now


def stopped_path(instance: str) -> Path:
    return _path(instance, "stopped")


def write_stopped(instance: str, reason: str) -> None:
    """Leave why this daemon stops with a failure, for whoever waits for the next one in vain."""
    _write_json(stopped_path(instance), {"pid": os.getpid(), "reason": reason})


def last_failure(instance: str) -> str | None:
    """'its last daemon (pid N) stopped: REASON' while no daemon was ready since one stopped with
    a failure; else None."""
    try:
        info = json.loads(stopped_path(instance).read_text())
        return f"its last daemon (pid {int(info['pid'])}) stopped: {info['reason']}"
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")  # one per file: ready and stopped are written apart
    tmp.write_text(json.dumps(value))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # atomic: a reader sees no file or a whole one


# ----------------------------------------------------------------- requests

def connect(instance: str, timeout: float = CALL_TIMEOUT) -> socket.socket:
    """A connection to the daemon of ``instance``; AttachError if none listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(socket_path(instance)))
    except OSError as exc:
        sock.close()
        raise AttachError(name=instance, reason=f"its Dask host daemon does not answer ({exc})") from None
    return sock


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def receive(stream: BinaryIO) -> dict[str, Any] | None:
    line = stream.readline()
    if not line:
        return None
    message = json.loads(line)
    if not isinstance(message, dict):
        raise InvalidArgument(argument="message", value=line[:80],
                              reason="a request or reply of the Dask host protocol is one JSON object")
    return message


def call(instance: str, message: dict[str, Any], timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
    """One request, one reply. A reply ``{"error": ...}`` is raised as the error it carries (:func:`rebuild_error`)."""
    with connect(instance, timeout) as sock:
        send(sock, message)
        with sock.makefile("rb") as stream:
            try:
                reply = receive(stream)
            except TimeoutError:
                raise AttachError(name=instance, reason=f"its Dask host daemon did not answer {message['op']!r} "
                                                        f"within {timeout:g} s") from None
    if reply is None:
        raise AttachError(name=instance, reason=f"its Dask host daemon closed the connection during {message['op']!r}")
    if "error" in reply:
        raise rebuild_error(instance, reply["error"])
    return reply


def error_reply(exc: BaseException) -> dict[str, Any]:
    """The reply that carries ``exc``: the job codec's error payload (shmpool's one error wire
    format), base64 in the JSON line, so a type, its fields (tuples, enums) and the daemon's
    traceback arrive as they would from a job."""
    return {"error": base64.b64encode(codec.encode_error(exc)).decode("ascii")}


def rebuild_error(instance: str, encoded: Any) -> BaseException:
    """The daemon's error as its own type (codec.rebuild_error); an error no caller could know
    (a type private to the daemon) becomes an AttachError that names it."""
    try:
        info = codec.error_info(base64.b64decode(str(encoded), validate=True))
    except (ValueError, TypeError) as exc:
        return AttachError(name=instance, reason=f"its Dask host daemon sent an unreadable error ({exc})")
    rebuilt = codec.rebuild_error(info)
    if rebuilt is not None:
        return rebuilt
    error = AttachError(name=instance, reason=f"its Dask host daemon failed: {info.get('type')}: {info.get('message')}")
    if info.get("traceback"):
        error.__cause__ = RemoteTraceback(str(info["traceback"]))
    return error


# ----------------------------------------------------------------- starting

def ensure_host(instance: str, config: HostConfig, timeout: float = START_TIMEOUT) -> int:
    """Make sure the daemon of ``instance`` runs and is caught up; returns its pid.

    Blocking. The first caller on a host starts it (a detached process in its own session, so it
    outlives the caller); the others wait on the spawn lock and find it ready. Raises AttachError
    quoting the daemon's log if it exits or is not ready within ``timeout`` seconds.
    """
    pid = ready_pid(instance)
    if pid is not None:
        return pid
    lock = FileLock(str(_path(instance, "spawn.lock")))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise AttachError(name=instance, reason=f"another process has been starting its Dask host daemon for "
                                                f"over {timeout:g} s") from None
    try:
        pid = ready_pid(instance)
        if pid is not None:
            return pid
        return _spawn(instance, config, timeout)
    finally:
        lock.release()


def _spawn(instance: str, config: HostConfig, timeout: float) -> int:
    log = log_path(instance)
    with open(log, "ab") as err:
        os.chmod(log, 0o600)
        proc = subprocess.Popen([sys.executable, "-m", "shmpool.coordinator.dask_host", instance, config.to_json()],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True, close_fds=True, env=_daemon_env())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = ready_pid(instance)
        if pid == proc.pid:
            logger.info("started Dask host daemon {} of instance {!r}", pid, instance)
            return pid
        code = proc.poll()
        if code is not None:
            raise AttachError(name=instance, reason=f"its Dask host daemon exited with {code} before it was "
                                                    f"ready: {_tail(log)}")
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    raise AttachError(name=instance, reason=f"its Dask host daemon was not ready within {timeout:g} s: {_tail(log)}")


def _daemon_env() -> dict[str, str]:
    # The daemon imports coordinator from wherever this process found shmpool (an editable
    # checkout is not always on sys.path of a fresh interpreter started elsewhere).
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip() or "(its log is empty)"
    except OSError as exc:
        return f"(no log: {exc})"


# ----------------------------------------------------------------- the store

def store_file(store_dir: str | os.PathLike[str], dimension_id: int, generation: int) -> Path:
    """Where generation ``generation`` of ``dimension_id`` lives in the store."""
    return Path(store_dir) / f"d{dimension_id}.g{generation:012d}.region"


def pending_file(store_dir: str | os.PathLike[str], dimension_id: int, generation: int) -> Path:
    """Where a publication is written before every host agreed to take it.

    Not a store file (no daemon serves it, a rescan skips it): renaming it to :func:`store_file`
    is the commit point of a cluster publish. Left behind only by a publisher that died; the
    next publish of its dimension removes it."""
    final = store_file(store_dir, dimension_id, generation)
    return final.with_name(final.name + PENDING_SUFFIX)


def store_entries(store_dir: str | os.PathLike[str]) -> dict[int, list[tuple[int, Path]]]:
    """{dimension id: [(generation, its file), ...] oldest first} of the store; {} if it does not exist."""
    found: dict[int, list[tuple[int, Path]]] = {}
    try:
        entries = os.listdir(store_dir)
    except FileNotFoundError:
        return found
    for entry in entries:
        match = _STORE_RE.match(entry)
        if match:
            found.setdefault(int(match[1]), []).append((int(match[2]), Path(store_dir) / entry))
    return {dim: sorted(files) for dim, files in found.items()}


def store_generations(store_dir: str | os.PathLike[str]) -> dict[int, tuple[int, Path]]:
    """{dimension id: (newest generation, its file)} of the store; {} if it does not exist."""
    return {dim: files[-1] for dim, files in store_entries(store_dir).items()}


def prune_store(store_dir: str | os.PathLike[str], dimension_id: int, below: int,
                keep: Iterable[tuple[int, int]] = ()) -> list[Path]:
    """Remove the store's generations of ``dimension_id`` older than ``below``, except the
    (dimension, generation) pairs in ``keep`` (what live pins hold); returns what went.

    Call it only once every host serves ``below`` or newer: a host serving an older one reloads
    it from its file if it is evicted."""
    removed = []
    held = set(keep)
    for generation, path in store_entries(store_dir).get(dimension_id, []):
        if generation < below and (dimension_id, generation) not in held:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def discard_pending(store_dir: str | os.PathLike[str], dimension_id: int) -> list[Path]:
    """Remove every pending publication of ``dimension_id`` (a publisher's leftovers)."""
    removed = []
    # The pending files, and the temporary files of a client killed while writing one.
    for pattern in (f"d{dimension_id}.g*.region{PENDING_SUFFIX}", f".d{dimension_id}.g*.region{PENDING_SUFFIX}.*.tmp"):
        for path in Path(store_dir).glob(pattern):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@dataclass
class Lease:
    """A Nanny's hold on its host's daemon: an open connection. The daemon stops ``linger``
    seconds after its last lease closes, which the kernel does for a process that dies."""
    instance: str
    sock: socket.socket | None = field(default=None, repr=False)

    def open(self) -> "Lease":
        self.sock = connect(self.instance)
        send(self.sock, {"op": "lease"})
        self.sock.settimeout(None)
        return self

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        try:
            # shutdown first: close() alone does not wake a thread blocked in recv() on it.
            sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:  # the daemon is gone already
            logger.debug("shutting down the lease on {!r}: {}", self.instance, exc)
        sock.close()
