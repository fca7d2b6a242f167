"""A /dev/shm smaller than the memory limit: typed errors, never a signal, nothing left behind.

Each test runs tests/_small_shm.py in a private mount namespace (``unshare -m``) whose /dev/shm
is a fresh small tmpfs, so the coordinator, its workers and the readers all see only that
filesystem; the script prints JSON that the test asserts on. It is also a private pid namespace
with its own /proc (liveness checks read it): when the script ends or dies, the kernel kills
whatever it started, so a test that fails (a coordinator killed by SIGBUS used to leave its
readers waiting forever) leaves no process behind either. Needs root (or a user namespace
allowed to mount): skipped with the reason where ``unshare`` is not permitted.
"""

from __future__ import annotations

import os
import sys

import pytest

from _small_shm_harness import _PROBLEM, MiB, _run

pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")


def _assert_shm_full(error: dict, shm_size: int) -> None:
    assert error["type"] == "SharedMemoryFull" and error["is_shmpool"]
    assert error["filesystem"] == "/dev/shm" and error["size"] == shm_size
    assert 0 <= error["free"] < error["nbytes"]
    assert "/dev/shm" in error["message"] and f"{error['free']} of {shm_size} bytes free" in error["message"]
    assert "--shm-size" in error["message"]


def _assert_start_warning(out: dict) -> None:
    warned = [w for w in out["warnings"] if w.startswith("shared-memory filesystem /dev/shm has")]
    assert len(warned) == 1, out["warnings"]
    assert f"({out['shm_size']} in all)" in warned[0] and "memory limit (293601280 bytes)" in warned[0]
    assert "docker run --shm-size" in warned[0] and "--memory-limit" in warned[0]


def test_filling_dev_shm_by_crystallizing_is_a_typed_error_and_readers_keep_reading(instance_name):
    out = _run("crystallize", instance_name, "64m")
    _assert_start_warning(out)
    assert out["loaded"] == 14  # the sample (30 MiB) fits; the 4 MiB dimensions fill the rest
    assert 3 <= out["crystallized"] < 10
    _assert_shm_full(out["error"], 64 * MiB)
    assert out["served_after"]
    for reader in (out["reader"], out["late_reader"]):  # one read throughout, one attached after
        assert reader["exitcode"] == 0 and reader["rounds"] >= 1 and reader["bad"] == 0
    assert out["stats"]["shm_full_refusals"] == 1 and out["stats"]["failures"] == 1
    assert out["stats"]["backed_bytes"] <= 64 * MiB
    assert out["left_in_shm"] == []


def test_a_job_result_that_does_not_fit_fails_that_job_and_the_worker_lives_on(instance_name):
    out = _run("results", instance_name, "64m")
    _assert_start_warning(out)
    _assert_shm_full(out["error"], 64 * MiB)  # the 48 MiB result, typed, in the client
    assert out["small_result"] == 256 * 1024  # a result that fits still spills and arrives
    assert out["worker_deaths"] == [] and out["workers_after"] == out["workers_before"]
    assert out["ping_pid"] in out["workers_before"]
    assert out["reader"]["exitcode"] == 0 and out["reader"]["rounds"] >= 1 and out["reader"]["bad"] == 0
    assert out["stats"]["shm_full_refusals"] == 1
    assert out["left_in_shm"] == []


def test_starting_in_a_16_mib_dev_shm_raises_shared_memory_full_and_leaves_nothing(instance_name):
    out = _run("start", instance_name, "16m")
    _assert_start_warning(out)
    _assert_shm_full(out["error"], 16 * MiB)
    assert "job board" in out["error"]["message"] or "jobs" in out["error"]["message"]
    assert not out.get("started") and out["running"] is False
    assert out["left_in_shm"] == []


def test_a_full_dev_shm_still_serves_requests_from_blocks_backed_before(instance_name):
    out = _run("reuse", instance_name, "8m")
    _assert_shm_full(out["error"], 8 * MiB)
    # 8 MiB minus the control segment (5.6 MiB by default) and 4 x 64 KiB
    assert 500 < out["small_before_full"] < 2048
    assert out["again"] == {"pool": 1, "first_block": 1}  # the freed 64 KiB block, backed already
    _assert_shm_full(out["second"], 8 * MiB)  # nothing backed is free any more
    assert out["stats"]["shm_full_refusals"] == 2
    assert out["left_in_shm"] == []


def _allocated_bytes(segment: str) -> int:
    return os.stat(f"/dev/shm{segment}").st_blocks * 512


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page reservation is Linux only")
def test_allocation_reserves_pages_once_and_they_stay_reserved(instance_name):
    from shmpool.lowlevel import PoolSpec, SharedInstance
    from shmpool.substrate.names import segment_name

    pools = (PoolSpec(4096, 1024),)
    with SharedInstance.create(instance_name, pools=pools, memory_limit=64 * MiB) as inst:
        pool0 = segment_name(instance_name, "pool0")
        assert _allocated_bytes(pool0) == 0  # sparse until allocated
        # The control segment is reserved whole at creation.
        assert _allocated_bytes(segment_name(instance_name, "control")) >= inst.control.layout.size
        h = inst.table.allocate(100)
        assert _allocated_bytes(pool0) == 4096 and inst.table.stats().backed_bytes == 4096  # before any write
        inst.table.free(h)
        h = inst.table.allocate(100)  # the same block: backed already, nothing more
        assert (h.first_block, inst.table.stats().backed_bytes) == (0, 4096)
        run = inst.table.allocate(5 * 4096)
        assert _allocated_bytes(pool0) == 6 * 4096 and inst.table.stats().backed_bytes == 6 * 4096
        for handle in (h, run):
            inst.table.free(handle)
