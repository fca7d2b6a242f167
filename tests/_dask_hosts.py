"""A small Dask cluster of simulated hosts for the shmpool.dask tests: one Nanny per host key.

A SpecCluster runs the scheduler and the Nannies in the test process and one worker process per
Nanny, each Nanny with its own SHMPOOL_DASK_HOST, so each gets its own host instance (and host
daemon) although they share /dev/shm. Lighter than test_dask's ``dask worker`` hosts (no
interpreter per host), for tests that do not kill a whole host.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from pathlib import Path
from typing import Any, Iterator

import distributed

from _waiting import wait_for
from conftest import TEST_PREFIX
from shmpool import _dask_host as host
from shmpool import dask as sd
from shmpool.substrate.names import cleanup, list_objects

TESTS = Path(__file__).parent
START = 120.0  # seconds for the workers to start on a loaded 2-core machine (only catches a hang)


def plugin_name() -> str:
    return f"{TEST_PREFIX}{secrets.token_hex(3)}"


def gone(instance: str) -> bool:
    return not any(list_objects(instance)) and host.ready_pid(instance) is None


@contextlib.contextmanager
def hosts_cluster(hosts: dict[str, int], **scheduler: Any) -> Iterator[distributed.Client]:
    """A cluster with ``hosts`` = {host key: workers}; yields its client. Register plugins on it."""
    env_path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    workers = {f"{key}-{i}": {"cls": distributed.Nanny,
                              "options": {"nthreads": 1, "env": {sd.HOST_ENV: key, "PYTHONPATH": env_path},
                                          "memory_limit": 0}}
               for key, count in hosts.items() for i in range(count)}
    spec = {"cls": distributed.Scheduler, "options": {"dashboard": False, "dashboard_address": ":0", **scheduler}}
    cluster = distributed.SpecCluster(workers=workers, scheduler=spec)
    client = distributed.Client(cluster)
    try:
        client.wait_for_workers(len(workers), timeout=START)
        yield client
    finally:
        client.close()
        cluster.close()


def stop_instances(*instances: str) -> list[str]:
    """Wait for the instances to go (their Nannies closed); kill and clean up any that did not."""
    left = []
    for instance in instances:
        try:
            wait_for(lambda: gone(instance), 20, f"instance {instance} gone")
        except AssertionError:
            left.append(instance)
            pid = host.ready_pid(instance)
            if pid:
                os.kill(pid, signal.SIGKILL)
            cleanup(instance)
    return left


def addresses(client: distributed.Client, key: str) -> list[str]:
    """The worker addresses of host ``key`` (its workers are named ``<key>-<i>``)."""
    return sorted(a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()
                  if str(w.get("name", "")).startswith(f"{key}-"))


def host_stats(instance: str) -> dict[str, Any]:
    """The stats of a host's instance, from its daemon."""
    stats: dict[str, Any] = host.call(instance, {"op": "stats"})["stats"]
    return stats
