"""Functions the Dask tests run in worker processes (importable there through PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import time

import shmpool.dask as sd


def where() -> dict:
    """This worker's host, its instance, its pid, and whether its reads are zero-copy."""
    r = sd.reader()
    dim = min(r.dimensions())
    ctx = r.load_layer_context(dim, r.layer_ids(dim)[0])
    # A view into the host's shared memory, read-only: exported by the core over the pinned pool
    # (its exporter holds the generation), not a copy.
    zero_copy = type(ctx.content.obj).__name__ == "_Bytes" and ctx.content.readonly
    return {"host": sd.host_key(), "instance": r.name, "pid": os.getpid(), "zero_copy": zero_copy,
            "verified": ctx.verify(), "same_reader": sd.reader() is r}


def read(dimension_id: int, layer_id: int) -> dict:
    ctx = sd.reader().load_layer_context(dimension_id, layer_id)
    return {"host": sd.host_key(), "pid": os.getpid(), "generation": ctx.generation,
            "content": bytes(ctx.content)}


def generation(dimension_id: int) -> tuple[str, int]:
    return sd.host_key(), sd.reader().generation(dimension_id)


def context(dimension_id: int, layer_id: int):
    return sd.reader().load_layer_context(dimension_id, layer_id)


def collection(steps):
    return sd.reader().load_contexts(steps, strict=False)


def read_then_die_once(marker: str, dimension_id: int, layer_id: int) -> dict:
    """First run: pin a generation, then SIGKILL this worker mid-task. Retries return normally."""
    ctx = sd.reader().load_layer_context(dimension_id, layer_id)
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # never reached
    return {"host": sd.host_key(), "pid": os.getpid(), "generation": ctx.generation}


def lookups(dimension_id: int, layer_ids: list[int]) -> int:
    r = sd.reader()
    return sum(len(r.load_layer_context(dimension_id, lid)) for lid in layer_ids)


def slow_read_on(host_key: str, seconds: float, dimension_id: int, layer_id: int) -> dict:
    """Busy for ``seconds`` on host ``host_key`` (so that losing that host finds it running), at once
    anywhere else (so the retry Dask moves to another host does not wait again)."""
    if sd.host_key() == host_key:
        time.sleep(seconds)
    return read(dimension_id, layer_id)


def instance_of(plugin: str) -> str:
    return sd.reader(plugin).name


def read_pinned(pinned, dimension_id: int, layer_id: int) -> dict:
    ctx = pinned.load_layer_context(dimension_id, layer_id)
    return {"host": sd.host_key(), "generation": ctx.generation, "content": bytes(ctx.content),
            "verified": ctx.verify(), "shared": ctx.generation == sd.reader().generation(dimension_id)}
