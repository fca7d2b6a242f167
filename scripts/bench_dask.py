"""shmpool.dask against the Dask-native ways of giving tasks read-only data; prints JSON.

Needs the ``dask`` extra, and psutil (``bench`` extra) for PSS. The cluster: a scheduler in this
process and two simulated hosts, each a ``dask worker`` process with ``--workers`` Nannies of one
thread, each host with its own SHMPOOL_DASK_HOST (so its own shmpool instance). The data: region
files of ``--dims`` dimensions x ``--layers`` layers of ``--layer-bytes`` bytes.

* ``lookup_tasks``: ``--tasks`` tasks (client.map, then gather), each loading a batch of 20
  random (dimension, layer) steps and returning their total length, done three ways:
  ``shmpool`` (``shmpool.dask.reader().load_contexts(path)``, zero-copy), ``scatter`` (the whole
  data set as a dict ``scatter(broadcast=True)`` to every worker, passed to each task), ``disk``
  (each task opens the region files it needs and copies its 20 layers out). Rounds interleave
  the three ways; figures are medians over rounds, with ratios to ``scatter`` computed per round
  (the machine is shared and noisy). ``in_task_us`` is the median time of the lookup part alone,
  measured inside the tasks.
* ``publish``: wall time of ``shmpool.dask.publish`` of 1 MiB and 16 MiB (64 KiB layers) to both
  hosts, median of ``--publish-rounds``.
* ``memory``: per host, what holding the data costs in PSS: shmpool = the PSS of every mapping of
  the host's instance segments summed over the daemon and the workers (shared pages are divided
  among their mappers, so the sum counts them once); scatter = the growth of the workers' PSS
  after the broadcast; disk = none held between tasks (the page cache holds the files once per
  host, outside any process).
"""

from __future__ import annotations

import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402

GOAL = "shmpool tasks at least as fast as scattered data (ratio <= 1.0), at a fraction of its memory per worker"


# ----------------------------------------------------------------- tasks (run in the workers)

def task_shmpool(path) -> tuple[int, int]:
    import shmpool.dask as sd
    t0 = time.perf_counter_ns()
    total = sd.reader().load_contexts(path).total_bytes
    return total, time.perf_counter_ns() - t0


def task_scatter(data, path) -> tuple[int, int]:
    t0 = time.perf_counter_ns()
    total = sum(len(data[step]) for step in path)
    return total, time.perf_counter_ns() - t0


def task_disk(folder, path) -> tuple[int, int]:
    from shmpool.data.region import Region
    t0 = time.perf_counter_ns()
    total = 0
    opened = {}
    try:
        for dim, layer in path:
            region = opened.get(dim)
            if region is None:
                region = opened[dim] = Region.open(Path(folder) / f"dim{dim}.region", verify_checksums=False)
            total += len(bytes(region.layer(layer)))
    finally:
        for region in opened.values():
            region.close()
    return total, time.perf_counter_ns() - t0


def worker_pid() -> int:
    return os.getpid()


def attach_reader() -> str:
    import shmpool.dask as sd
    return sd.reader().name


# ----------------------------------------------------------------- the cluster

def build_data(folder: Path, dims: int, layers: int, size: int) -> dict:
    from shmpool.data.region_builder import RegionBuilder
    rng = random.Random(7)
    data = {}
    for dim in range(1, dims + 1):
        builder = RegionBuilder(dim, f"bench{dim}")
        for lid in range(1, layers + 1):
            content = rng.randbytes(size)
            builder.add_layer(lid, content)
            data[(dim, lid)] = content
        builder.write(folder / f"dim{dim}.region")
    return data


def start_host(scheduler: str, key: str, workers: int) -> subprocess.Popen:
    import shmpool.dask as sd
    here = str(Path(__file__).resolve().parent)
    env = dict(os.environ, **{sd.HOST_ENV: key},
               PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--nworkers",
                             str(workers), "--nthreads", "1", "--name", key, "--no-dashboard",
                             "--memory-limit", "0", "--death-timeout", "60"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pss(pid: int) -> int:
    import psutil
    return psutil.Process(pid).memory_full_info().pss


def mapped_pss(pid: int, marker: str) -> int:
    import psutil
    return sum(m.pss for m in psutil.Process(pid).memory_maps(grouped=True) if marker in m.path)


def main() -> None:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes per host")
    parser.add_argument("--dims", type=int, default=4)
    parser.add_argument("--layers", type=int, default=1024)
    parser.add_argument("--layer-bytes", type=int, default=4096)
    parser.add_argument("--publish-rounds", type=int, default=5)
    args = parser.parse_args()
    benchlib.quiet_logging()
    benchlib.raise_on_sigterm()
    os.environ.setdefault("SHMPOOL_RUNTIME_DIR", tempfile.mkdtemp(prefix="bench-dask-rt-"))

    import distributed
    import shmpool.dask as sd
    from shmpool import _dask_host as host

    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    (work / "data").mkdir()
    data = build_data(work / "data", args.dims, args.layers, args.layer_bytes)
    data_bytes = sum(len(v) for v in data.values())
    plugin = f"bench-dask-{secrets.token_hex(3)}"
    keys = ("hostA", "hostB")
    instances = {k: host.instance_name(plugin, k) for k in keys}
    local = distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None)
    client = distributed.Client(local)
    procs = []
    try:
        client.register_plugin(sd.ShmpoolPlugin(plugin, data_dir=work / "data", store_dir=work / "store",
                                                memory_limit=1 << 30, linger=1.0))
        procs = [start_host(local.scheduler_address, k, args.workers) for k in keys]
        client.wait_for_workers(len(keys) * args.workers, timeout=300)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        host_of = {a: str(w["name"]).rsplit("-", 1)[0] if args.workers > 1 else str(w["name"])
                   for a, w in workers.items()}
        pids = client.run(worker_pid)
        rng = random.Random(11)
        steps = list(data)
        paths = [[rng.choice(steps) for _ in range(20)] for _ in range(args.tasks)]
        expected = sum(len(data[s]) for p in paths for s in p)

        # Memory, measured once, each way's growth over the idle workers.
        client.run(attach_reader)  # attach in every worker: the shmpool figure includes their mappings
        base = {a: pss(pids[a]) for a in workers}
        memory = {}
        for key in keys:
            marker = f"shmpool.{instances[key]}."
            daemon = host.ready_pid(instances[key])
            shm = mapped_pss(daemon, marker) + sum(mapped_pss(pids[a], marker) for a in workers if host_of[a] == key)
            memory[key] = {"shmpool_pss_bytes": shm}
        run_way(client, "shmpool", paths[:2000], None, work)  # warm: every worker maps every dimension
        for key in keys:
            marker = f"shmpool.{instances[key]}."
            daemon = host.ready_pid(instances[key])
            memory[key]["shmpool_pss_bytes"] = (mapped_pss(daemon, marker) +
                                                sum(mapped_pss(pids[a], marker) for a in workers if host_of[a] == key))
        after_shm = {a: pss(pids[a]) for a in workers}
        (scattered,) = client.scatter([data], broadcast=True)  # one future for the whole dict
        client.submit(task_scatter, scattered, paths[0], pure=False).result()
        after_scatter = {a: pss(pids[a]) for a in workers}
        for key in keys:
            mine = [a for a in workers if host_of[a] == key]
            grow = [after_scatter[a] - after_shm[a] for a in mine]
            memory[key].update({
                "workers": len(mine),
                "scatter_pss_growth_bytes": int(sum(grow)),
                "scatter_pss_growth_per_worker_bytes": int(statistics.mean(grow)),
                "shmpool_worker_pss_growth_bytes": int(sum(after_shm[a] - base[a] for a in mine)),
                "disk_pss_held_bytes": 0,
            })
            memory[key]["shmpool_to_scatter"] = round(memory[key]["shmpool_pss_bytes"] / max(1, sum(grow)), 3)

        # Timing: interleaved rounds, ways in a rotating order.
        ways = ["shmpool", "scatter", "disk"]
        rounds = []
        for r in range(args.rounds):
            row = {}
            for way in ways[r % 3:] + ways[:r % 3]:
                row[way] = run_way(client, way, paths, scattered, work, expected)
            rounds.append(row)
        lookup = {}
        for way in ways:
            lookup[way] = {
                "wall_s": round(statistics.median(row[way]["wall_s"] for row in rounds), 3),
                "tasks_per_s": round(args.tasks / statistics.median(row[way]["wall_s"] for row in rounds), 1),
                "in_task_us": round(statistics.median(row[way]["in_task_us"] for row in rounds), 2),
            }
        for way in ("shmpool", "disk"):
            lookup[way]["wall_ratio_to_scatter"] = round(statistics.median(
                row[way]["wall_s"] / row["scatter"]["wall_s"] for row in rounds), 3)
            lookup[way]["in_task_ratio_to_scatter"] = round(statistics.median(
                row[way]["in_task_us"] / row["scatter"]["in_task_us"] for row in rounds), 3)
        del scattered

        publish = {}
        for label, nbytes in (("1MiB", 1 << 20), ("16MiB", 16 << 20)):
            layers = {i: os.urandom(64 * 1024) for i in range(1, nbytes // (64 * 1024) + 1)}
            times = []
            for r in range(args.publish_rounds):
                t0 = time.perf_counter()
                sd.publish(client, 500 + (nbytes >> 20), f"pub{label}", layers)
                times.append(time.perf_counter() - t0)
            publish[label] = {"median_ms": round(statistics.median(times) * 1e3, 1),
                              "min_ms": round(min(times) * 1e3, 1), "rounds": len(times)}
        met = (lookup["shmpool"]["wall_ratio_to_scatter"] <= 1.0 and
               all(m["shmpool_to_scatter"] < 1.0 for m in memory.values()))
    finally:
        client.shutdown()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        # Each host's daemon lingers a second after its last Nanny, then unlinks everything.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and benchlib.shm_leftovers(list(instances.values())):
            time.sleep(0.1)
    benchlib.write_result("bench_dask", {
        "config": {"tasks": args.tasks, "steps_per_task": 20, "rounds": args.rounds, "hosts": len(keys),
                   "workers_per_host": args.workers, "threads_per_worker": 1, "dimensions": args.dims,
                   "layers_per_dimension": args.layers, "layer_bytes": args.layer_bytes,
                   "data_bytes": data_bytes},
        "lookup_tasks": lookup,
        "rounds": rounds,
        "publish": publish,
        "memory": memory,
        "goal": GOAL,
        "goal_met": met,
        "leftovers": benchlib.shm_leftovers(list(instances.values())),
    }, args.out_dir, save=not args.no_save)


def run_way(client, way: str, paths, scattered, work: Path, expected: int | None = None) -> dict:
    t0 = time.perf_counter()
    if way == "shmpool":
        futures = client.map(task_shmpool, paths, pure=False)
    elif way == "scatter":
        futures = client.map(task_scatter, [scattered] * len(paths), paths, pure=False)
    else:
        futures = client.map(task_disk, [str(work / "data")] * len(paths), paths, pure=False)
    results = client.gather(futures)
    wall = time.perf_counter() - t0
    total = sum(r[0] for r in results)
    if expected is not None and total != expected:
        raise RuntimeError(f"{way}: tasks read {total} bytes, expected {expected}")
    return {"wall_s": round(wall, 3), "in_task_us": round(statistics.median(r[1] for r in results) / 1e3, 2)}


if __name__ == "__main__":
    main()
