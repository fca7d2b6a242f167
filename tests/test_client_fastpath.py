"""The fast job path keeps the board whole: spin mode, and call()'s deferred slot release."""

from __future__ import annotations

import os
import threading

import pytest
from _waiting import wait_for

import _introspect as peek
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.jobs.spin import AUTO_SPIN_US, SPIN_MIN_CPUS, spin_seconds

SLOTS = 4


def test_spin_settings_are_checked_and_auto_follows_the_core_count(monkeypatch):
    assert spin_seconds(None) == spin_seconds(0) == 0.0
    assert spin_seconds(50) == pytest.approx(50e-6)
    for bad in (-1, True, "fast", 1e9):
        with pytest.raises(ValueError, match="spin_us"):
            spin_seconds(bad)
    monkeypatch.setattr(os, "cpu_count", lambda: SPIN_MIN_CPUS - 1)
    assert spin_seconds("auto") == 0.0
    monkeypatch.setattr(os, "cpu_count", lambda: SPIN_MIN_CPUS)
    assert spin_seconds("auto") == pytest.approx(AUTO_SPIN_US / 1e6)


def test_calls_in_spin_mode_are_answered_and_leave_every_slot_free(instance_name):
    with Coordinator(instance_name, workers=1, job_slots=SLOTS, max_clients=8, worker_spin_us=100) as coord:
        with shmpool.connect(instance_name, spin_us=100) as client:
            pid = coord.stats()["workers"]["pids"][0]
            assert [client.call("ping", timeout=30) for _ in range(200)] == [pid] * 200
            # The last answer's slot is freed by the completion thread once the caller idles.
            wait_for(lambda: peek.job_counts(coord)["free"] == SLOTS, 30)
            c = peek.job_counts(coord)
            assert c["submitted"] == c["completed"] == 200


def test_an_idle_call_thread_does_not_keep_a_slot(instance_name):
    with Coordinator(instance_name, workers=1, job_slots=SLOTS, max_clients=8) as coord:
        with shmpool.connect(instance_name) as client:
            threads = [threading.Thread(target=client.call, args=("ping",), kwargs={"timeout": 5})
                       for _ in range(SLOTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            # Every slot is usable at once again: each thread's last answer slot was freed.
            wait_for(lambda: peek.job_counts(coord)["free"] == SLOTS, 30)
            futures = [client.submit("ping", timeout=1) for _ in range(SLOTS)]
            assert len({f.result(30) for f in futures}) == 1


def test_many_calling_threads_hold_few_channels_and_others_still_connect(instance_name):
    with Coordinator(instance_name, workers=1, job_slots=SLOTS, max_clients=8) as coord:
        with shmpool.connect(instance_name) as client:
            done = threading.Barrier(21)

            def call_once_then_linger():
                client.call("ping", timeout=30)
                done.wait(10)  # alive, as a pool thread would be

            threads = [threading.Thread(target=call_once_then_linger) for _ in range(20)]
            for t in threads:
                t.start()
            try:
                assert peek.job_counts(coord)["clients"] <= 1 + 4  # the client's own + its call() pool
                with shmpool.connect(instance_name) as other:  # channels are left for others
                    assert other.call("ping", timeout=30) > 0
            finally:
                done.wait(10)
                for t in threads:
                    t.join(10)
