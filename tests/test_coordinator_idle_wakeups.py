"""An idle coordinator's reaper sleeps, and every event that needs it wakes it.

The reaper used to run a round every 20 ms whatever happened (~22 ms of CPU a second for an
idle coordinator). Now it sleeps up to IDLE_TICK when nothing can need it sooner, and whatever
used to be found by those rounds posts its wake semaphore instead: a publication, a worker's
exit (pidfd), a worker taking a job off an idle board (JW.REAPER_ASLEEP).

Wake-ups are counted as the reaper's rounds (``Coordinator.reaper_rounds``), never timed: a
short round follows a 20 ms sleep, so more rounds than elapsed / 20 ms means something woke it. The promptness tests make the idle sleep an hour long (IDLE_TICK and the 1 s sweep
monkeypatched), so that only the event can have brought the reaper round in time; their
30 s deadlines only catch a hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import _executor_jobs as jobs
import shmpool
from _introspect import job_board, superseded_generations, worker_deaths
from _waiting import wait_for
from shmpool.coordinator import Coordinator
from shmpool.coordinator import coordinator as coordinator_module
from shmpool.coordinator import reaper_sleep
from shmpool.coordinator.worker_exits import ExitWatch
from shmpool.errors import JobTimeout
from shmpool.jobs.jobs_layout import JW

HANG = 30.0      # seconds: every wait_for below; reached only by a hang
WINDOW = 3.0     # seconds of idleness whose wake-ups are counted
HOUR = 3600.0


def _wakeups_while_idle(coord: Coordinator) -> int:
    time.sleep(0.7)  # past the short rounds that follow start-up's publications and the workers' start
    before = coord.reaper_rounds
    time.sleep(WINDOW)
    return coord.reaper_rounds - before


def _asleep(coord: Coordinator) -> bool:
    """Whether the reaper raised the board's flag: it sleeps past its short round."""
    return int(job_board(coord).v.words[JW.REAPER_ASLEEP]) == 1


@pytest.fixture
def hour_long_idle_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle reaper that sleeps an hour: only a wake-up can bring its next round."""
    monkeypatch.setattr(reaper_sleep, "IDLE_TICK", HOUR)
    monkeypatch.setattr(coordinator_module, "DEAD_SWEEP_INTERVAL", HOUR)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_idle_coordinator_wakes_about_once_a_second_not_fifty_times(instance_name, workers):
    with Coordinator(instance_name, workers=workers) as coord:
        wakeups = _wakeups_while_idle(coord)
    # One round a second (IDLE_TICK) is ~3 in the window; 20 ms rounds were ~150. The bound
    # leaves room for a loaded machine, not for short rounds.
    assert wakeups <= 2 * WINDOW, f"{wakeups} reaper rounds in {WINDOW} s of idleness"


def test_jobs_one_at_a_time_keep_the_reaper_on_its_short_rounds_and_wake_it_no_more(instance_name):
    """The board is idle between two jobs of one caller; without BOARD_QUIET the reaper slept
    after nearly every job and the next job's worker woke it (~108 rounds a second here)."""
    with Coordinator(instance_name, workers=1) as coord, shmpool.connect(instance_name) as client:
        time.sleep(1.5)  # asleep: the first job wakes it, once
        rounds, t0 = coord.reaper_rounds, time.monotonic()
        while time.monotonic() - t0 < 2.0:
            assert client.submit(pow, 2, 3).result(HANG) == 8
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        rounds = coord.reaper_rounds - rounds
    # Short rounds sleep 20 ms each unless woken: more than elapsed / 20 ms (plus the first job's
    # wake-up and a spare) means workers kept waking it.
    assert rounds <= elapsed / reaper_sleep.RECLAIM_INTERVAL + 2, f"{rounds} rounds in {elapsed:.2f} s"


def test_a_publication_wakes_an_idle_reaper_and_its_superseded_generation_is_freed(instance_name,
                                                                                   hour_long_idle_sleeps):
    with Coordinator(instance_name, workers=0) as coord:
        proto = coord.create_proto_dimension(5, "d")
        proto.add_layer(1, b"first")
        coord.crystallize(5)
        with shmpool.attach(instance_name) as reader:
            ctx = reader.load_layer_context(5, 1)  # pins generation 1
            time.sleep(0.5)  # idle: the reaper went to its hour-long sleep
            proto = coord.create_proto_dimension(5, "d")
            proto.add_layer(1, b"second")
            assert coord.crystallize(5) == 2
            assert [p.generation for p in superseded_generations(coord)] == [1]  # pinned: kept
            time.sleep(0.3)
            assert [p.generation for p in superseded_generations(coord)] == [1]
            del ctx
            reader.drop_stale()
            # Freed by the short rounds a pending generation keeps, not by a round an hour away.
            wait_for(lambda: not superseded_generations(coord), HANG, "the unpinned generation freed")


def test_a_sigkilled_worker_of_an_idle_coordinator_is_replaced_at_once(instance_name, hour_long_idle_sleeps):
    with Coordinator(instance_name, workers=2) as coord:
        wait_for(lambda: _asleep(coord), HANG, "the reaper asleep")
        victim = coord.stats()["workers"]["pids"][0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: any(d["pid"] == victim for d in worker_deaths(coord)), HANG, "the death handled")
        death = next(d for d in worker_deaths(coord) if d["pid"] == victim)
        assert death["returncode"] == -signal.SIGKILL
        wait_for(lambda: victim not in coord.stats()["workers"]["pids"]
                 and len(coord.stats()["workers"]["pids"]) == 2, HANG, "a replacement")
        with shmpool.connect(instance_name) as client:
            assert client.submit(pow, 2, 10).result(HANG) == 1024  # the pool serves again


def test_a_job_taken_off_an_idle_board_wakes_the_reaper_for_its_deadline(instance_name, hour_long_idle_sleeps):
    with Coordinator(instance_name, workers=1, job_modules=["time"]) as coord, \
            shmpool.connect(instance_name) as client:
        wait_for(lambda: _asleep(coord), HANG, "the reaper asleep")
        future = client.submit(time.sleep, HANG, job_timeout=0.3)
        # The worker that took it saw the flag and posted: short rounds while the job runs.
        wait_for(lambda: not _asleep(coord), HANG, "the reaper awake for the running job")
        with pytest.raises(JobTimeout) as err:
            future.result(HANG)
        assert err.value.timeout == 0.3
        # Idle again: back to sleep, and the replaced worker serves.
        wait_for(lambda: _asleep(coord), HANG, "the reaper asleep again")
        assert client.submit(pow, 3, 3).result(HANG) == 27


def test_a_delayed_restart_is_made_when_due_by_a_reaper_that_sleeps_otherwise(instance_name, tmp_path,
                                                                              hour_long_idle_sleeps):
    """A crash loop's pause (0.5 s, doubling) ends at a time the reaper sleeps until: no event
    announces it, so without that due time an hour-long sleep would keep the worker down."""
    ok = tmp_path / "db-is-up"
    ok.write_text("")
    with Coordinator(instance_name, workers=1, job_modules=["_executor_jobs"],
                     worker_init=jobs.init_fails, worker_init_args=("db down", str(ok))) as coord:
        victim = coord.stats()["workers"]["pids"][0]
        ok.unlink()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: any(d["restart_in"] > 0 for d in worker_deaths(coord)), HANG, "a restart delayed")
        ok.write_text("")
        wait_for(lambda: len(coord.stats()["workers"]["pids"]) == 1, HANG, "the delayed restart made")
        with shmpool.connect(instance_name) as client:
            assert client.submit(pow, 3, 2).result(HANG) == 9


def test_without_pidfds_the_reaper_keeps_polling_its_workers(instance_name, hour_long_idle_sleeps, monkeypatch):
    def refused(pid: int, flags: int = 0) -> int:
        raise PermissionError(1, "pidfd_open refused (as by a seccomp filter)")

    monkeypatch.setattr(os, "pidfd_open", refused)
    with Coordinator(instance_name, workers=1) as coord:
        wakeups = _wakeups_while_idle(coord)
        assert wakeups > 10 * WINDOW, "a reaper that cannot hear exits must keep its 20 ms rounds"
        assert not _asleep(coord)
        victim = coord.stats()["workers"]["pids"][0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: any(d["pid"] == victim for d in worker_deaths(coord)), HANG, "the death handled")


def test_the_exit_watch_calls_wake_when_a_watched_process_exits_and_closes_its_descriptors():
    fds_before = set(os.listdir("/proc/self/fd"))
    woken = threading.Event()
    watch = ExitWatch("exit-watch-test", woken.set)
    assert watch.reliable
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        watch.watch(child.pid)
        assert not woken.wait(0.2)  # alive: no wake
        child.kill()
        assert woken.wait(HANG), "no wake after the child exited"
    finally:
        child.kill()
        child.wait(HANG)
        watch.close()
        watch.close()  # idempotent
    assert set(os.listdir("/proc/self/fd")) <= fds_before  # its pipe and the pidfd are closed


def test_a_closed_exit_watch_stops_its_thread(instance_name):
    watch = ExitWatch(instance_name, lambda: None)
    thread = next(t for t in threading.enumerate() if t.name == f"shmpool-{instance_name}-exits")
    watch.close()
    thread.join(HANG)
    assert not thread.is_alive()
