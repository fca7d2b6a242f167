"""Publishing one region on every host of a Dask cluster: all hosts or none (shmpool.dask.publish).

The protocol, under a Dask Lock per plugin, with its commit point marked:

    1. ask every host (one worker each) which generation it serves; the new one is one more than
       the highest of those and of the store's
    2. write the region to the store as a *pending* file (_dask_host.pending_file): from the
       client itself when it sees the store (the hosts read it there; nothing crosses a Dask
       worker), else streamed to one worker in STREAM_CHUNK pieces (one piece in its memory)
    3. *prepare* on every host: its daemon checks the file, the generation, and holds the room
       the region needs (LimitExceeded, AllocationFailed, GenerationNotNewer here)
    4. any failure: *abort* on every host, remove the pending file, raise the first host's error
       as its own type. No host and no store file changed.
    5. COMMIT POINT: rename the pending file to its store name (atomic)
    6. *publish* on every host (it uses the room it holds), then prune what every host moved past

A failure after 5 (a host died, or lost its room to a reload in between) cannot be undone
(generations only increase): the error is raised naming the host, which keeps retrying from
the store with back-off until it serves the generation. A publisher that dies leaves a pending
file (the next publish of the dimension removes it) and reservations (each host lets them go
after ``timeout`` seconds).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Iterable, Mapping

from distributed import Client
from distributed import Lock as _Lock
from .substrate._log import logger

from . import _dask_host as host
from .data.region_builder import RegionBuilder
from .errors import AttachError, InvalidArgument
from .substrate.ids import as_id

__all__ = ["publish", "STREAM_CHUNK"]

# distributed's Lock and Client.get_metadata are unannotated: called through Any, our side stays typed.
Lock: Any = _Lock
STREAM_CHUNK = 8 << 20  # bytes per piece when the client cannot write the store itself
_sees_store: dict[tuple[str, str], bool] = {}  # (client id, store folder) -> the client writes it itself


def publish(client: Client, dimension_id: int, name: str,
            layers: Mapping[int, Any] | Iterable[tuple[Any, ...]], *, plugin: str | None = None,
            timeout: float = 120.0) -> int:
    """Crystallize the same content on every host; returns its generation, the same everywhere.

    Blocking. ``layers`` maps layer ids to content (bytes, or str for text), or is an iterable
    of ``(layer_id, content)`` or ``(layer_id, content, {"frequency": .., "keywords": ..})``.
    Every host serving the dimension (all, unless placed) publishes it under one generation:
    one more than the highest any host or the store has. All or nothing: if any host cannot
    take it, no host and no store file changes, and that host's error is raised as its own
    type (LimitExceeded, AllocationFailed, GenerationNotNewer if a host moved past the agreed
    generation, RegionFormatError). When this returns, a task submitted after it sees the new
    content on whichever host it runs. Concurrent publishes are serialized by a Dask Lock.
    Raises InvalidArgument/InvalidLayer for bad input (nothing written), AttachError if a host's
    instance does not answer. See the module docstring for the protocol and its commit point.
    """
    dimension_id = as_id(dimension_id, "dimension_id")
    plugin, store_dir = _plugin_of(client, plugin)
    builder = _builder(dimension_id, name, layers)  # InvalidLayer before anything is written
    with Lock(f"shmpool-publish-{plugin}", scheduler_rpc=client.scheduler, loop=client.loop):
        by_host, current = _hosts(client, plugin, dimension_id)
        some = next(iter(by_host.values()))
        stored = client.submit(_store_begin, store_dir, dimension_id, workers=[some], pure=False).result(timeout)
        generation = max([stored, *current.values()]) + 1
        pending = str(host.pending_file(store_dir, dimension_id, generation))
        try:
            _write_pending(client, some, store_dir, pending, builder, timeout)
            served = _prepare(client, by_host, plugin, dimension_id, generation, pending, timeout)
            final = client.submit(_store_commit, pending, workers=[some], pure=False).result(timeout)
        except BaseException:
            _roll_back(client, by_host, plugin, dimension_id, generation, store_dir, some)
            raise
        _commit(client, {h: by_host[h] for h in served}, plugin, dimension_id, generation, final)
        client.submit(_store_prune, store_dir, dimension_id, generation, workers=[some], pure=False).result(timeout)
    logger.info("published dimension {} ({!r}) as generation {} on hosts {}", dimension_id, name, generation,
                sorted(served))
    return generation


# ----------------------------------------------------------------- steps (in the client)

def _plugin_of(client: Client, plugin: str | None) -> tuple[str, str]:
    get_metadata: Any = client.get_metadata
    known: dict[str, dict[str, Any]] = get_metadata([host.METADATA_KEY], default={})
    if (len(known) != 1) if plugin is None else (plugin not in known):
        # Dask's client.restart() clears the scheduler's metadata, where each Nanny's setup
        # wrote its plugin's; the Nannies still run the plugins: ask them, and write it back.
        known = {**known, **_plugins_on_nannies(client)}
    if plugin is None:
        if len(known) != 1:
            hint = "" if known else f". {host.NO_NANNY_HINT}"
            raise InvalidArgument(argument="plugin", value=None,
                                  reason=f"name the ShmpoolPlugin to publish through; registered: {sorted(known)}{hint}")
        plugin = next(iter(known))
    if plugin not in known:
        raise InvalidArgument(argument="plugin", value=plugin,
                              reason=f"no Nanny runs this ShmpoolPlugin; registered: {sorted(known)}. "
                                     f"{host.NO_NANNY_HINT}")
    return plugin, str(known[plugin]["store_dir"])


def _plugins_on_nannies(client: Client) -> dict[str, dict[str, Any]]:
    """{plugin name: its metadata} of the ShmpoolPlugins the cluster's Nannies run, written back
    to the scheduler's metadata; {} on a cluster without Nannies."""
    run: Any = client.run
    try:
        by_nanny: dict[str, dict[str, dict[str, Any]]] = run(_served_plugins, nanny=True)
    except Exception as exc:  # no Nannies to ask (or none answering): the caller's error says so
        logger.debug("asking the Nannies for their ShmpoolPlugins failed: {!r}", exc)
        return {}
    found = {name: meta for served in by_nanny.values() for name, meta in served.items()}
    set_metadata: Any = client.set_metadata
    for name, meta in found.items():
        set_metadata([host.METADATA_KEY, name], meta)
    return found


def _served_plugins(dask_worker: Any) -> dict[str, dict[str, Any]]:
    """On a Nanny (client.run(..., nanny=True)): its ShmpoolPlugins' metadata, as its setup wrote it."""
    from .dask import plugin_metadata

    return plugin_metadata(dask_worker)


def _builder(dimension_id: int, name: str, layers: Mapping[int, Any] | Iterable[tuple[Any, ...]]) -> RegionBuilder:
    builder = RegionBuilder(dimension_id, name)
    items = layers.items() if isinstance(layers, Mapping) else layers
    for item in items:
        layer_id, content, *rest = item
        options = rest[0] if rest else {}
        builder.add_layer(layer_id, content, **options)
    return builder


def _hosts(client: Client, plugin: str, dimension_id: int) -> tuple[dict[str, str], dict[str, int]]:
    """({host: the address of one of its workers}, {host: the generation it serves})."""
    states: dict[str, dict[str, Any]] = client.run(_host_state, plugin, dimension_id)
    if not states:
        raise AttachError(name=plugin, reason="the cluster has no workers to publish through")
    by_host: dict[str, str] = {}
    for address, state in sorted(states.items()):
        by_host.setdefault(state["host"], address)
    return by_host, {s["host"]: int(s["generation"]) for s in states.values()}


def _write_pending(client: Client, worker: str, store_dir: str, pending: str, builder: RegionBuilder,
                   timeout: float) -> None:
    if _client_sees_store(client, store_dir, worker, timeout):
        builder.write(pending)  # streams the layers to the file, where the hosts read it
        os.chmod(pending, 0o600)
        return
    # Piece by piece through one worker, so it never holds more than STREAM_CHUNK of it: a
    # whole 200 MB region in one worker's memory got it restarted by Dask's memory monitor.
    data = memoryview(builder.to_bytes())
    for offset in range(0, max(len(data), 1), STREAM_CHUNK):
        piece = bytes(data[offset:offset + STREAM_CHUNK])
        client.submit(_store_append, pending, offset, piece, workers=[worker], pure=False).result(timeout)
    client.submit(_store_seal, pending, len(data), workers=[worker], pure=False).result(timeout)


def _client_sees_store(client: Client, store_dir: str, worker: str, timeout: float) -> bool:
    """Does the store folder this client sees hold what the worker's does (one machine, NFS)?"""
    key = (str(client.id), store_dir)
    if key not in _sees_store:
        probe = Path(store_dir) / f".probe-{secrets.token_hex(8)}"
        token = secrets.token_hex(16)
        try:
            probe.write_text(token)
        except OSError:
            _sees_store[key] = False
        else:
            try:
                _sees_store[key] = client.submit(_read_probe, str(probe), workers=[worker],
                                                 pure=False).result(timeout) == token
            finally:
                probe.unlink(missing_ok=True)
    return _sees_store[key]


def _prepare(client: Client, by_host: dict[str, str], plugin: str, dimension_id: int, generation: int,
             pending: str, timeout: float) -> list[str]:
    """Every host holds the room for it, or the first host's error is raised; the hosts serving it."""
    replies = client.run(_host_call, plugin, "prepare", dimension_id, generation, pending, timeout,
                         workers=list(by_host.values()), on_error="return")
    host_of = {address: h for h, address in by_host.items()}
    failed = {host_of[a]: r for a, r in replies.items() if isinstance(r, BaseException)}
    if failed:
        for h, exc in sorted(failed.items()):
            logger.warning("host {!r} cannot take dimension {} generation {}: {}: {}", h, dimension_id,
                           generation, type(exc).__name__, exc)
        raise failed[min(failed)]
    served = sorted(host_of[a] for a, r in replies.items() if r["serves"])
    if not served:
        raise InvalidArgument(argument="dimension_id", value=dimension_id,
                              reason=f"no host of plugin {plugin!r} serves it (placement)")
    return served


def _roll_back(client: Client, by_host: dict[str, str], plugin: str, dimension_id: int, generation: int,
               store_dir: str, worker: str) -> None:
    """Undo steps 2-3: every host lets its room go, the pending file goes. Best effort: a host
    that does not answer lets it go after the publish timeout anyway."""
    try:
        client.run(_host_call, plugin, "abort", dimension_id, generation, "", 0.0,
                   workers=list(by_host.values()), on_error="ignore")
        client.submit(host.discard_pending, store_dir, dimension_id, workers=[worker], pure=False).result(60)
    except Exception as exc:  # the caller sees the error that made us roll back, not this one
        logger.warning("rolling back the publish of dimension {} generation {}: {}", dimension_id, generation, exc)


def _commit(client: Client, by_host: dict[str, str], plugin: str, dimension_id: int, generation: int,
            final: str) -> None:
    replies = client.run(_host_call, plugin, "publish", dimension_id, generation, final, 0.0,
                         workers=list(by_host.values()), on_error="return")
    host_of = {address: h for h, address in by_host.items()}
    failed = {host_of[a]: r for a, r in replies.items() if isinstance(r, BaseException)}
    wrong = {host_of[a]: r["generation"] for a, r in replies.items()
             if not isinstance(r, BaseException) and r["generation"] != generation}
    for h, exc in sorted(failed.items()):
        logger.error("host {!r} did not publish dimension {} generation {} after every host prepared it "
                     "(it retries from the store): {}: {}", h, dimension_id, generation, type(exc).__name__, exc)
    if failed:
        raise failed[min(failed)]
    if wrong:
        raise AttachError(name=plugin, reason=f"hosts {wrong} did not publish generation {generation}")


# ----------------------------------------------------------------- in workers

def _host_state(plugin: str, dimension_id: int) -> dict[str, Any]:
    """This host, its instance's generation of the dimension."""
    instance = host.instance_name(plugin, host.host_key())
    reply = host.call(instance, {"op": "generations"})
    return {"host": host.host_key(), "instance": instance,
            "generation": int(reply["generations"].get(str(dimension_id), 0))}


def _host_call(plugin: str, op: str, dimension_id: int, generation: int, path: str, ttl: float) -> dict[str, Any]:
    """One prepare / abort / publish request to this host's daemon (its errors raise as their type)."""
    instance = host.instance_name(plugin, host.host_key())
    return host.call(instance, {"op": op, "dimension_id": dimension_id, "generation": generation, "file": path,
                                "ttl": ttl})


def _store_begin(store_dir: str, dimension_id: int) -> int:
    """The store's newest generation of the dimension, after removing a dead publisher's pending
    files of it (we hold the publish lock: no live publisher has one)."""
    for path in host.discard_pending(store_dir, dimension_id):
        logger.warning("removed {}: a publish that never committed", path)
    return host.store_generations(store_dir).get(dimension_id, (0, Path()))[0]


def _store_prune(store_dir: str, dimension_id: int, below: int) -> None:
    """Every host moved past the generations below ``below``: remove them, except what a live pin holds."""
    from ._dask_pin import pinned_generations

    for path in host.prune_store(store_dir, dimension_id, below, keep=pinned_generations(store_dir)):
        logger.debug("pruned {}: every host moved past it", path)


def _store_append(path: str, offset: int, piece: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if offset == 0 else 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.pwrite(fd, piece, offset)
    finally:
        os.close(fd)


def _store_seal(path: str, nbytes: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        if os.fstat(fd).st_size != nbytes:
            raise OSError(f"{path} holds {os.fstat(fd).st_size} bytes, {nbytes} were sent")
        os.fsync(fd)
    finally:
        os.close(fd)


def _store_commit(pending: str) -> str:
    """The commit point: the pending file becomes a store file (atomic rename, made durable)."""
    final = pending[:-len(host.PENDING_SUFFIX)]
    os.replace(pending, final)
    fd = os.open(os.path.dirname(final) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on a folder: best effort
        logger.debug("fsync of the store folder: {}", exc)
    finally:
        os.close(fd)
    return final


def _read_probe(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None
