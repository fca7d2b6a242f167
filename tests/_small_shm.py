"""Runs inside a private mount namespace whose /dev/shm is a small tmpfs (see test_small_shm.py).

``python _small_shm.py SCENARIO NAME`` fills that /dev/shm one way, then prints one JSON object:
what failed and how, what readers and workers saw afterwards, what the log said, and what was
left in /dev/shm after stop. A process killed by a signal shows up as a negative exit code or as
no JSON at all, which the test reports.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time

from loguru import logger

import shmpool
from shmpool import SAMPLE
from shmpool.coordinator import Coordinator
from shmpool.errors import ShmPoolError
from shmpool.substrate.names import SHM_DIR

MiB = 1024 * 1024
LAYER = 256 * 1024  # 16 layers of 256 KiB: one 4 MiB dimension
FIRST_NEW_DIMENSION = 1000


def _error(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": str(exc), "is_shmpool": isinstance(exc, ShmPoolError),
            **{k: getattr(exc, k) for k in ("filesystem", "size", "free", "nbytes") if hasattr(exc, k)}}


def _layer(dimension_id: int, layer_id: int) -> bytes:
    return bytes([(dimension_id + layer_id) % 251]) * LAYER


def _reader(name: str, dimensions: list[int], go, stop, results) -> None:
    """Another process reading every layer of ``dimensions`` in a loop, checking the bytes."""
    reader = shmpool.attach(name)
    rounds, bad = 0, 0
    go.set()
    while not stop.is_set():
        for dim in dimensions:
            for lid in reader.layer_ids(dim):
                ctx = reader.load_layer_context(dim, lid)
                if dim >= FIRST_NEW_DIMENSION and bytes(ctx.content) != _layer(dim, lid):
                    bad += 1
                elif dim < FIRST_NEW_DIMENSION and not ctx.verify():
                    bad += 1
                del ctx
        rounds += 1
    reader.close()
    results.put({"rounds": rounds, "bad": bad})


def _start_reader(name: str, dimensions: list[int]):
    ctx = mp.get_context("spawn")
    go, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_reader, args=(name, dimensions, go, stop, results))
    proc.start()
    go.wait(30)
    return proc, stop, results


def _stop_reader(proc, stop, results) -> dict:
    stop.set()
    try:
        seen = results.get(timeout=30)
    except Exception as exc:  # noqa: BLE001 - reported, the test asserts on it
        seen = {"error": repr(exc)}
    proc.join(30)
    seen["exitcode"] = proc.exitcode
    return seen


def fill_by_crystallizing(name: str, out: dict) -> None:
    # A small board (4 MiB) so that most of the 64 MiB is left for data.
    with Coordinator(name, data_dir=SAMPLE, mapped_regions=False, workers=1, job_slots=16, max_clients=8) as coord:
        out["loaded"] = len(coord.load_report.loaded)
        sample = sorted(coord.load_report.loaded)
        proc, stop, results = _start_reader(name, sample)
        made, dim = [], FIRST_NEW_DIMENSION
        while dim < FIRST_NEW_DIMENSION + 40:  # 160 MiB: far more than fits
            proto = coord.create_proto_dimension(dim, f"fill{dim}")
            for lid in range(1, 17):
                proto.add_layer(lid, _layer(dim, lid))
            try:
                coord.crystallize(dim)
            except ShmPoolError as exc:
                out["error"] = _error(exc)
                break
            made.append(dim)
            dim += 1
        out["crystallized"] = len(made)
        # The instance keeps serving what it has: the coordinator's own reader, another process
        # (which kept reading throughout), and a fresh one attaching now.
        reader = coord.reader()
        out["served_after"] = all(bytes(reader.load_layer_context(d, 1).content) == _layer(d, 1) for d in made)
        out["reader"] = _stop_reader(proc, stop, results)
        late, late_stop, late_results = _start_reader(name, sample[:2] + made[:2])
        time.sleep(0.2)
        out["late_reader"] = _stop_reader(late, late_stop, late_results)
        out["stats"] = {k: coord.stats()[k] for k in ("shm_full_refusals", "backed_bytes", "failures")}


def fill_by_job_results(name: str, out: dict) -> None:
    with Coordinator(name, data_dir=SAMPLE, mapped_regions=False, workers=1, job_slots=16, max_clients=8, job_modules=["_jobs"]) as coord:
        out["loaded"] = len(coord.load_report.loaded)
        sample = sorted(coord.load_report.loaded)
        pids = coord.stats()["workers"]["pids"]
        proc, stop, results = _start_reader(name, sample)
        with shmpool.connect(name) as client:
            try:
                client.submit("_jobs:big", 48 * MiB).result(60)
                out["big"] = "returned"
            except ShmPoolError as exc:
                out["error"] = _error(exc)
            # The worker lives on and serves jobs whose results fit; so does every reader.
            out["small_result"] = len(client.submit("_jobs:big", 256 * 1024).result(30))
            out["ping_pid"] = client.submit("ping").result(30)
        out["reader"] = _stop_reader(proc, stop, results)
        stats = coord.stats()
        out["workers_before"], out["workers_after"] = pids, stats["workers"]["pids"]
        out["worker_deaths"] = stats["workers"]["deaths"]
        out["stats"] = {k: stats[k] for k in ("shm_full_refusals", "backed_bytes", "failures")}


def start_too_small(name: str, out: dict) -> None:
    coord = Coordinator(name, data_dir=SAMPLE, mapped_regions=False, workers=1)
    try:
        coord.start()
        out["started"] = True
        coord.stop()
    except ShmPoolError as exc:
        out["error"] = _error(exc)
    out["running"] = coord.running


def reuse_backed_blocks(name: str, out: dict) -> None:
    """Full /dev/shm: a 4 KiB request whose best pool has only never-backed blocks left is placed
    in a free block of another pool that was backed before, instead of failing."""
    from shmpool.lowlevel import PoolSpec, SharedInstance

    pools = (PoolSpec(4 * 1024, 4096), PoolSpec(64 * 1024, 64))  # 16 + 4 MiB, sparse
    with SharedInstance.create(name, pools=pools, memory_limit=64 * MiB) as inst:
        table = inst.table
        big = [table.allocate(64 * 1024) for _ in range(4)]
        small = []
        try:
            while True:
                small.append(table.allocate(4 * 1024))
        except ShmPoolError as exc:
            out["error"] = _error(exc)
        out["small_before_full"] = len(small)
        table.free(big[1])
        again = table.allocate(4 * 1024)
        out["again"] = {"pool": again.pool, "first_block": again.first_block}
        inst.handle_view(again)[:] = b"x" * 4096  # backed: no SIGBUS
        try:
            table.allocate(4 * 1024)
            out["second"] = "allocated"
        except ShmPoolError as exc:
            out["second"] = _error(exc)
        out["stats"] = {"shm_full_refusals": table.stats().shm_full_refusals}
        for h in [*small, again, big[0], *big[2:]]:
            table.free(h)


SCENARIOS = {"reuse": reuse_backed_blocks, "crystallize": fill_by_crystallizing, "results": fill_by_job_results, "start": start_too_small}


def main() -> int:
    scenario, name = sys.argv[1], sys.argv[2]
    warnings: list[str] = []
    logger.remove()
    logger.enable("shmpool")  # the coordinator and the workers log under shmpool.* too
    logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    st = os.statvfs(SHM_DIR)
    out: dict = {"shm_size": st.f_blocks * st.f_frsize}
    SCENARIOS[scenario](name, out)
    out["warnings"] = warnings
    out["left_in_shm"] = sorted(os.listdir(SHM_DIR))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
