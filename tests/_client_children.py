"""Processes for the worker-pool tests: a coordinator to kill, a client that must not hang."""

from __future__ import annotations

import time

import shmpool
from shmpool.coordinator import Coordinator


def coordinator_process(name: str, data_dir: str, ready, stop) -> None:
    coord = Coordinator(name, data_dir=data_dir, workers=1, job_modules=["_jobs"]).start()
    ready.set()
    stop.wait(3600)
    coord.stop()


def client_process(name: str, submitted, results) -> None:
    client = shmpool.connect(name)
    futures = [client.submit("_jobs:slow", 5.0, i) for i in range(3)]
    submitted.set()
    t0 = time.monotonic()
    outcomes = []
    for f in futures:
        try:
            outcomes.append(("result", f.result(timeout=30)))
        except Exception as exc:  # what we want to see: a typed error, quickly
            outcomes.append((type(exc).__name__, str(exc)))
    results.put((outcomes, time.monotonic() - t0))
