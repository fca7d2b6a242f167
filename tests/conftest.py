"""Fixtures that give every test its own instance name and prove nothing of it leaks.

Names are ``pt-<session>-<xdist worker>-<random>``: unique per test and per session, so ``pytest -n auto`` runs tests side
by side. After each test, anything left in /dev/shm under the test's names is removed AND the
test fails; at the end of the session, anything of this worker's prefix still there fails too.
A worker judges only its own prefix: another worker's or another session's dead instance may be
exactly what that test is inspecting (tests/_test_names.py). A session killed outright (the OOM
killer takes a pytest worker and its coordinators) runs neither check, so each session first
sweeps the dead instances of the sessions whose worker is gone.

Beyond shmpool's own names, each test, and each test module with its module-scoped fixtures, must
leave no other /dev/shm name that appeared while it ran and that no live process holds
(tests/_shm_orphans.py): libraries we drive, such as multiprocessing under Dask's Nannies, leak
named semaphores when a test kills the process that would have unlinked them. (Instances of
scripts, ``bench-*`` or ``chaos-*``, are the scripts' to check, and may be someone else's run.)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from shmpool.substrate.names import PREFIX, cleanup, instance_names, list_objects
from shmpool.substrate.trust import SHM_DIR
from shmpool.data.sample import build_sample

import _shm_orphans
import _stray_children
import _test_names

# Fixtures shared by a few modules that are not for every test: `coord` (a small coordinator),
# `stress_run` (one short `shmpool stress --out` run), `warnings` (what shmpool logged), `cli`
# (`shmpool` commands forked from a command server).
pytest_plugins = ("_small_coord", "_stress_run", "_warnings_logged", "_cli_command")

# No clock in property tests either: hypothesis's 200 ms per-example deadline and its too_slow
# health check fail a correct test on a loaded machine. Tests still set their own max_examples.
settings.register_profile("shmpool", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shmpool")

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw")
# One id per pytest session (xdist gives all workers of a run the same one), so two sessions
# running at once neither blame nor clean up each other's instances.
RUN = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or secrets.token_hex(4))[:8]
ME = _test_names.Owner(RUN, WORKER)
TEST_PREFIX = ME.prefix


def _leftovers(stem: str) -> list[str]:
    try:
        return sorted(e for e in os.listdir(SHM_DIR) if stem in e)
    except OSError:
        return []


@pytest.fixture(scope="session", autouse=True)
def _runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("shmpool-runtime")
    os.environ["SHMPOOL_RUNTIME_DIR"] = str(path)
    lock = _test_names.hold_session_lock(ME)
    _test_names.sweep_dead_sessions(ME)
    try:
        yield path
    finally:
        _test_names.release_session_lock(ME, lock)
    left = _leftovers(PREFIX + TEST_PREFIX)
    for name in instance_names(TEST_PREFIX):
        cleanup(name)
    assert not left, f"the test session left shared objects behind: {left}"


# iceoryx2's process-global management file is never mapped while its peers live: seen from
# another xdist worker's module it looks orphaned mid-run, and removing it would break that
# worker's bench_jobs smoke test, which unlinks it itself when its peers end (scripts/bench_jobs.py).
LIVES_UNMAPPED = ("iox2_",)


def _judged_here(entry: str) -> bool:
    return _test_names.judged_here(entry, ME) and not entry.startswith(LIVES_UNMAPPED)


def _remove_orphans_among(new: list[str]) -> list[str]:
    """Those of ``new`` that no live process holds (see _shm_orphans), removed now."""
    left = _shm_orphans.orphans(new) if new else []
    for entry in left:
        try:
            (SHM_DIR / entry).unlink()
        except FileNotFoundError:
            pass
    return left


@pytest.fixture(scope="module", autouse=True)
def _no_orphans_in_dev_shm(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the module if a name appeared in /dev/shm while it ran that nobody holds at its end.

    What a single test leaves is caught, and reported under that test, by _no_orphans_after_test;
    this catches what the module's own fixtures leave (a module-scoped cluster's teardown is part
    of what it checks: an autouse fixture is set up first, so it is torn down last). Names of
    unrelated processes are not blamed while they hold them; an orphan is removed so the next
    module starts clean.
    """
    before = set(os.listdir(SHM_DIR))
    yield
    left = _remove_orphans_among([e for e in os.listdir(SHM_DIR) if e not in before and _judged_here(e)])
    assert not left, (f"{request.module.__name__} (its module-scoped fixtures) left names in /dev/shm that no "
                      f"live process maps (removed now): {left}")


@pytest.fixture(autouse=True)
def _no_orphans_after_test(request: pytest.FixtureRequest, _no_orphans_in_dev_shm: None) -> Iterator[None]:
    """Fail the test that left a /dev/shm name nobody holds. Two listings per test; the /proc scan
    (about 15 ms) only when a name is new, which a test that cleans up after itself never has."""
    before = set(os.listdir(SHM_DIR))
    yield
    left = _remove_orphans_among([e for e in os.listdir(SHM_DIR) if e not in before and _judged_here(e)])
    assert not left, (f"{request.node.nodeid} left names in /dev/shm that no live process maps "
                      f"(removed now): {left}")


@pytest.fixture
def make_name(request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """Factory of fresh instance names; each is checked for leftovers after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
        made.append(name)
        return name

    yield make
    leaked = {}
    for name in made:
        segments, sems = list_objects(name)
        if segments or sems:
            leaked[name] = segments + sems
            cleanup(name)
    assert not leaked, f"{request.node.name} left shared objects behind: {leaked}"


@pytest.fixture
def instance_name(make_name: Callable[[], str]) -> str:
    return make_name()


TESTS = Path(__file__).parent


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in sample written once per worker session, for coordinators with data_dir=.

    Read only: a test that damages a file copies it first (0.2 s of CPU per build, once per
    module it used to be)."""
    path = tmp_path_factory.mktemp("sample")
    build_sample(path)
    return path


@pytest.fixture
def user_jobs_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/ on the PYTHONPATH that workers inherit, so user jobs like "_jobs:slow" resolve."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))


# Tests that must share one xdist worker, so that a module- or session-scoped fixture they use
# starts once rather than once per worker: a module file, or "file::test". Each test not listed
# is a work unit of its own, handed to whichever worker is free (as --dist load does). Done with
# a scheduler rather than xdist_group marks: --dist loadgroup groups nothing under pytest 9.2
# (pytest-dev/pytest-xdist#1386: the worker's nodeid suffix no longer takes).
SAME_WORKER = {
    "test_dask.py": "the Dask cluster",                    # ~8 s to start, ~4 s to stop
    "test_workers.py": "test_workers pool",
    "test_client_array_arguments.py": "array arguments coordinator",
    "test_client_map_batches.py": "map batches coordinator",
    "test_client_dropped.py": "dropped clients coordinator",
    "test_client_slots.py": "client slots coordinator",
    "test_client_sendable_values.py": "sendable values pool",
    "test_reader.py": "test_reader served",
    "test_reader_ids.py": "test_reader_ids served",
    "test_client_executor_conformance.py": "conformance coordinator",
    "test_cli_bad_inputs.py": "the command's fork server",
    "test_cli.py::test_short_stress_run_with_worker_kills_reports_no_torn_lost_or_leaked": "stress_run",
    "test_cli_stress_report.py::test_stress_out_writes_windows_that_add_up_and_a_figure": "stress_run",
    "test_dask_publish.py": "the publish cluster",         # two hosts: ~5 s of CPU to start
    "test_client_executor_features.py": "features coordinator",
    # This session's review modules whose tests share one module-scoped coordinator or reader.
    "test_client_review_timeouts.py": "timeouts client",
    "test_array_review_foreign_header.py": "foreign header reader",
    "test_context_review_released_content.py": "released content reader",
    "test_lookup_review_hostile_rows.py": "hostile rows reader",
    "test_lookup_review_hostile_text.py": "hostile text reader",
    "test_process_local_not_picklable.py": "not picklable instance",
    "test_reader_dimension_names.py": "dimension names reader",
    "test_reader_review_argument_types.py": "argument types reader",
    "test_worker_job_module_import_errors.py": "import errors client",
    # The session's wheel (tests/_wheel.py): a second worker asking for it while the first builds
    # would wait idle on the build's lock for a minute of a loaded run.
    "test_packaging.py::test_the_wheel_adds_exactly_one_top_level_package_and_carries_both_process_roles": "wheel",
    "test_packaging_core.py::test_the_wheel_carries_the_built_core_and_its_stubs_but_not_its_sources": "wheel",
    "test_packaging_core.py::test_the_wheel_installs_and_locks_in_a_fresh_venv_without_a_compiler": "wheel",
}


def _work_unit(nodeid: str) -> str:
    """The SAME_WORKER group of a test, else the test itself."""
    path, _, name = nodeid.partition("::")
    file = path.rsplit("/", 1)[-1]
    return SAME_WORKER.get(f"{file}::{name.split('[', 1)[0]}") or SAME_WORKER.get(file) or nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]  # xdist ships no py.typed

    class SharedFixtureScheduling(LoadScopeScheduling):  # type: ignore[misc]  # (untyped base)
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

        # A worker that dies (a segfault in a test) must make the run red, never hang it.
        # LoadScopeScheduling (xdist 3.8) puts the crashed test back in the queue with the rest
        # of its unit, so the next worker runs it and dies too, and it gives a replacement
        # worker no work: the run waited forever with idle workers (seen in a merge's first run).
        def remove_node(self, node: Any) -> str | None:
            # xdist's own, but without the crashed test in what goes back to the queue (xdist
            # reports it failed), and it must be taken out before the others are rescheduled.
            workload = self.assigned_work.pop(node)
            if not self._pending_of(workload):
                return None
            crashed: str = next(nodeid for unit in workload.values() for nodeid, done in unit.items() if not done)
            for unit in workload.values():
                if crashed in unit:
                    unit[crashed] = True  # done: never sent to a worker again
            self.workqueue.update((scope, unit) for scope, unit in workload.items() if not all(unit.values()))
            for other in self.assigned_work:
                self._reschedule(other)
            return crashed

        def add_node_collection(self, node: Any, collection: Any) -> None:
            super().add_node_collection(node, collection)
            if self.collection and node in self.registered_collections:  # a replacement, after schedule()
                self._reschedule(node)

    # Work units are handed out in collection order (LONGEST_FIRST below), not largest group first
    # (xdist's default for scopes), which would start many short tests before the long ones.
    config.option.loadscopereorder = False
    return SharedFixtureScheduling(config, log)


# The work units that take longest (--durations and CPU seconds of a loaded run on the 2-core
# machine), started first in this order: with two xdist workers, a 60 s unit picked up last leaves
# the other worker idle for most of it. A module file (all its tests), or "file::test".
LONGEST_FIRST = ("test_packaging_core.py", "test_packaging.py",
                 "test_bench_smoke.py::test_bench_jobs_quick_runs_every_system_prints_complete_json_and_cleans_up",
                 "test_bench_smoke.py", "test_dask.py", "test_client_array_arguments.py",
                 "test_chaos.py", "test_dask_publish.py", "test_reader_pins.py", "test_client_executor_features.py",
                 "test_demo_own_kills.py", "test_chaos_fork_and_names.py", "test_dask_registration.py",
                 "test_newcomer_first_program.py", "test_cli.py", "test_cli_ops.py", "test_board_heal.py",
                 "test_coordinator_startup_cache.py", "test_workers.py", "test_reader_fork.py", "test_small_shm.py",
                 "test_cli_newcomer_defects.py", "test_coordinator_removed_names.py", "test_snapshots.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def place(item: pytest.Item) -> int:
        test = f"{item.path.name}::{item.name.split('[', 1)[0]}"
        return rank.get(test, rank.get(item.path.name, len(rank)))

    items.sort(key=place)  # stable: collection order kept otherwise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    before = _stray_children.children()
    try:
        return (yield)
    except BaseException:
        # The test failed: what it started and left running is stopped (tests/_stray_children.py).
        stopped = _stray_children.stop(_stray_children.children() - before)
        if stopped:
            item.add_report_section("call", "stray children", f"stopped processes it left running: {stopped}")
        raise
