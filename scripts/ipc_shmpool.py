"""shmpool's rows of the job-path comparison: ``Client.call``, ``submit().result()``, ``map``, and a
low-latency client if this shmpool has one. Features are detected, never assumed, so the same
benchmark measures the job path before and after a rewrite.

The coordinators live in the benchmark's main process (``ipc_rounds.run``); these peers are the
client end, opened inside a client process by instance name.
"""

from __future__ import annotations

import inspect

JOB = "bench_inc"  # registered as ipc_peers.shmpool_inc: x -> x + 1
REPLY_TIMEOUT = 30.0
_LOW_LATENCY_WORDS = ("low_latency", "lowlatency", "spin", "busy")


def map_chunksize() -> str | None:
    """None if ``Client.map`` takes ``chunksize``; else why not (for the record)."""
    from shmpool.jobs.client import Client

    params = inspect.signature(Client.map).parameters
    if "chunksize" in params:
        return None
    return f"not supported: Client.map{inspect.signature(Client.map)} has no chunksize"


SPIN_US = 50  # the low-latency row: client and worker each spin up to this long per wait


def low_latency_option() -> tuple[dict | None, str]:
    """(keyword arguments of ``shmpool.connect`` for a low-latency client, how) or (None, why not)."""
    import shmpool
    from shmpool.jobs.client import Client

    if "spin_us" in inspect.signature(shmpool.connect).parameters:
        return {"spin_us": SPIN_US}, (f"shmpool.connect(name, spin_us={SPIN_US}) against "
                                      f"Coordinator(worker_spin_us={SPIN_US}), 1 worker")

    for label, fn in (("shmpool.connect", shmpool.connect), ("Client", Client.__init__)):
        for p in inspect.signature(fn).parameters.values():
            if not any(w in p.name.lower() for w in _LOW_LATENCY_WORDS):
                continue
            if label == "shmpool.connect" or p.name in inspect.signature(shmpool.connect).parameters:
                if isinstance(p.default, bool) or p.annotation in (bool, "bool"):
                    return {p.name: True}, f"shmpool.connect(name, {p.name}=True)"
                return None, (f"{label} has parameter {p.name!r} (default {p.default!r}) but no obvious "
                              "'on' value: not measured")
            return None, f"Client takes {p.name!r} but shmpool.connect does not: not measured"
    methods = [m for m in dir(Client) if any(w in m.lower() for w in _LOW_LATENCY_WORDS)]
    if methods:
        return None, f"Client has {methods} but no connect option: not measured"
    return None, "not available: neither shmpool.connect nor Client takes a low-latency or spin option"


class ShmpoolPeer:
    """One Client of a running instance; ``call`` through ``Client.call`` or ``submit().result()``."""

    def __init__(self, name: str, pids: list[int], *, via_call: bool, options: dict | None = None) -> None:
        import shmpool

        self.client = shmpool.connect(name, **(options or {}))
        self.pids = list(pids)
        self.via_call = via_call

    def call(self, x: int) -> int:
        if self.via_call:
            return self.client.call(JOB, x, timeout=REPLY_TIMEOUT)
        return self.client.submit(JOB, x).result(REPLY_TIMEOUT)

    def submit(self, x: int):
        return self.client.submit(JOB, x)

    def wait(self, future) -> int:
        return future.result(REPLY_TIMEOUT)

    def map_items(self, n: int, chunksize: int | None) -> None:
        kwargs = {} if chunksize is None else {"chunksize": chunksize}
        got = list(self.client.map(JOB, range(n), timeout=REPLY_TIMEOUT * 4, **kwargs))
        if got != list(range(1, n + 1)):
            raise RuntimeError("shmpool map: wrong replies")

    def close(self) -> None:
        self.client.close()
