"""Client processes for the job-board healing tests: each dies (or stops) at a named point."""

from __future__ import annotations

import time

import shmpool
from shmpool.substrate import _faults


def client_dies_at(name: str, fault: str, jobs: int) -> None:
    """Connect, arm ``fault``, then submit and collect ``jobs`` jobs until the point fires."""
    client = shmpool.connect(name)
    _faults.arm(fault)
    futures = [client.submit("_jobs:slow", 0.05, i) for i in range(jobs)]
    for future in futures:
        future.result(30)
    time.sleep(3600)  # the point never fired: the test sees a live process and fails


def client_with_jobs_in_flight(name: str, jobs: int, ready) -> None:
    client = shmpool.connect(name)
    futures = [client.submit("_jobs:slow", 0.2, i) for i in range(jobs)]
    ready.set()
    time.sleep(3600)
    del futures


def client_stops_holding_the_board_lock(name: str) -> None:
    client = shmpool.connect(name)
    _faults.arm("lock.held.jobs:stop")
    client.submit("_jobs:slow", 0, 0)  # stops inside the board lock; the test kills it
    time.sleep(3600)


def coordinator_with_a_small_board(name: str, data_dir: str, ready) -> None:
    from shmpool.coordinator import Coordinator

    Coordinator(name, data_dir=data_dir, workers=2, job_slots=8, max_clients=16, job_modules=["_jobs"]).start()
    ready.set()
    time.sleep(3600)  # SIGKILLed by the test


def client_sleeps_for_a_slot(name: str, jobs: int) -> None:
    """Fill every slot with slow jobs, then sleep in a submit waiting for one more (to be killed)."""
    client = shmpool.connect(name)
    futures = [client.submit("_jobs:slow", 0.5, i) for i in range(jobs)]
    client.submit("_jobs:slow", 0, "one too many", timeout=60)
    time.sleep(3600)
    del futures
