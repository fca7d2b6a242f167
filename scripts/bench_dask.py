"""shmpool.dask against the Dask-native ways of giving tasks read-only data; prints JSON.

Needs the ``dask`` extra, and psutil (``bench`` extra) for PSS. The cluster: a scheduler in this
process and two simulated hosts, each a ``dask worker`` process with ``--workers`` Nannies of one
thread, each host with its own SHMPOOL_DASK_HOST (so its own shmpool instance). The data: region
files of ``--dims`` dimensions x ``--layers`` layers of ``--layer-bytes`` bytes.

Dask's Active Memory Manager is OFF for the whole run (``--amm`` turns it on): with it on, its
ReduceReplicas policy drops the replicas ``scatter(broadcast=True)`` made, which undoes the
baseline (and hung 4 of 5 runs at 200 MB, dask/distributed#8796).

* ``lookup_tasks``: ``--tasks`` tasks (client.map, then gather), each loading a batch of 20
  random (dimension, layer) steps and returning their total length, done four ways:
  ``shmpool`` (``shmpool.dask.reader().load_contexts(path)``, zero-copy), ``scatter`` (the whole
  data set as a dict ``scatter(broadcast=True)`` to every worker, passed to each task),
  ``global`` (the dict sent once to every worker with ``client.run`` into a worker attribute,
  read by each task from there), ``disk`` (each task opens the region files it needs and copies
  its 20 layers out). Rounds interleave the ways; figures are medians over rounds, with ratios
  to ``scatter`` computed per round (the machine is shared and noisy). ``in_task_us`` is the
  median time of the lookup part alone, measured inside the tasks: for shmpool ``reader()``
  and the batch (split in ``in_task_split_us``), for scatter and global the 20 dict lookups in
  the copy Dask (or the worker attribute) hands the task. Goal: shmpool's wall time at most
  0.8x scatter's (``goal_met.lookup_wall``). ``--lookup-only`` skips ``distribute`` and the
  PSS figures of ``memory`` (a quick run of the lookup goal); ``--ways`` picks the ways, among
  them ``noop``, tasks of the same shape that look nothing up: the wall time Dask itself takes,
  below which no way of reading data can go. ``--paths-per-task K`` runs the same ``--tasks``
  paths in tasks of K paths each, every way alike (``task_chunk``): with one path a task, every
  way runs at Dask's own task rate (on 2 cores ~1.2 ms a task, against ~11-22 us of lookup), so
  the wall time is Dask's; with K paths a task it shows what the lookups themselves cost.
* ``distribute``: wall time of giving every host the whole data set: shmpool publishes each
  dimension (``shmpool.dask.publish``), scatter broadcasts the dict, global runs the install;
  medians of ``--publish-rounds``, ratios to scatter per round. ``under_load`` does it again
  while ``--load-tasks`` lookup tasks of the same way run.
* ``memory``: per host, what holding the data costs in PSS. shmpool = the host daemon's whole
  PSS (its interpreter included) + every worker's PSS growth from attaching and reading all
  the data (shared pages are divided among their mappers, so the sum counts them once);
  scatter and global = the workers' PSS growth when they received the dict. ``dask_sees`` is
  what Dask's memory monitor reads per worker (RSS: every shared page a worker touched, in
  full) against its PSS.
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

GOAL = ("memory per host at most 0.3x scatter's at 200 MB and at most 1x at 16 MiB (daemon counted); publish of "
        "the data at most 0.5x scatter's time; republish under load at most 1x a re-scatter; 10,000 lookup tasks "
        "in at most 0.8x scatter's wall time (issue 22)")
LOOKUP_WALL_GOAL = 0.8


# ----------------------------------------------------------------- tasks (run in the workers)

def task_shmpool(path) -> tuple[int, int, int]:
    import shmpool.dask as sd
    t0 = time.perf_counter_ns()
    reader = sd.reader()
    t1 = time.perf_counter_ns()
    total = reader.load_contexts(path).total_bytes
    t2 = time.perf_counter_ns()
    return total, t2 - t0, t1 - t0  # the whole lookup part, and reader() within it


def task_scatter(data, path) -> tuple[int, int]:
    t0 = time.perf_counter_ns()
    total = sum(len(data[step]) for step in path)
    return total, time.perf_counter_ns() - t0


def task_noop(path) -> tuple[int, int]:
    """The floor: a task of the same shape (the path in, two ints out) that looks nothing up."""
    t0 = time.perf_counter_ns()
    return 0, time.perf_counter_ns() - t0


def task_global(path) -> tuple[int, int]:
    from distributed import get_worker
    data = get_worker().shmpool_bench_data  # installed by install_global
    t0 = time.perf_counter_ns()
    total = sum(len(data[step]) for step in path)
    return total, time.perf_counter_ns() - t0


def install_global(data, dask_worker=None) -> int:
    """client.run target: the dict becomes an attribute of this worker (a worker global)."""
    dask_worker.shmpool_bench_data = data
    return len(data)


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


def task_chunk(task, chunk, *prefix) -> tuple[int, int]:
    """``--paths-per-task``: one task runs ``task(*prefix, path)`` for each path of ``chunk``;
    its total bytes and the sum of their in-task times (the same wrapper for every way)."""
    total = spent = 0
    for path in chunk:
        got = task(*prefix, path)
        total += got[0]
        spent += got[1]
    return total, spent


def worker_pid() -> int:
    return os.getpid()


def worker_rss() -> int:
    """What Dask's memory monitor reads for this worker (psutil RSS)."""
    import psutil
    return int(psutil.Process().memory_info().rss)


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
    parser.add_argument("--publish-rounds", type=int, default=3)
    parser.add_argument("--load-tasks", type=int, default=2000, help="tasks running during the under-load round")
    parser.add_argument("--memory-limit", type=int, default=1 << 30, help="each host instance's limit (bytes)")
    parser.add_argument("--amm", action="store_true", help="leave Dask's Active Memory Manager on")
    parser.add_argument("--lookup-only", action="store_true",
                        help="only the lookup tasks (no distribute phase, no PSS figures)")
    parser.add_argument("--paths-per-task", type=int, default=1,
                        help="lookup paths each task runs, the same for every way (default 1: --tasks tasks of "
                             "one path, the issue 22 goal); above 1, --tasks paths in tasks of that many")
    parser.add_argument("--ways", default="shmpool,scatter,global,disk",
                        help="the lookup ways to time, comma-separated; scatter (the baseline) is always in; "
                             "noop (tasks of the same shape that look nothing up: Dask's floor) on request")
    args = parser.parse_args()
    benchlib.quiet_logging()
    benchlib.raise_on_sigterm()
    os.environ.setdefault("SHMPOOL_RUNTIME_DIR", tempfile.mkdtemp(prefix="bench-dask-rt-"))

    import dask
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
    # The scheduler and the workers read it at start: set before either exists (the worker
    # processes inherit it through DASK_ environment variables).
    amm = {"distributed.scheduler.active-memory-manager.start": bool(args.amm)}
    os.environ["DASK_DISTRIBUTED__SCHEDULER__ACTIVE_MEMORY_MANAGER__START"] = str(bool(args.amm))
    dask.config.set(amm)
    local = distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=":0")
    client = distributed.Client(local)
    procs = []
    try:
        client.register_plugin(sd.ShmpoolPlugin(plugin, data_dir=work / "data", store_dir=work / "store",
                                                memory_limit=args.memory_limit, linger=1.0))
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

        if args.lookup_only:
            client.run(attach_reader)
            run_way(client, "shmpool", paths[:2000], None, work)  # warm: every worker maps every dimension
            if "global" in args.ways.split(","):
                client.run(install_global, data)
            (scattered,) = client.scatter([data], broadcast=True)
            memory = {}
        else:
            memory, scattered = measure_memory(client, data, paths, work, keys, instances, host_of, pids)

        # Timing: interleaved rounds, ways in a rotating order.
        ways = [w for w in ("shmpool", "scatter", "global", "disk", "noop")
                if w in args.ways.split(",") or w == "scatter"]
        rounds = []
        for r in range(args.rounds):
            row = {}
            for way in ways[r % len(ways):] + ways[:r % len(ways)]:
                row[way] = run_way(client, way, paths, scattered, work, expected, args.paths_per_task)
            rounds.append(row)
        lookup = {}
        for way in ways:
            lookup[way] = {
                "wall_s": round(statistics.median(row[way]["wall_s"] for row in rounds), 3),
                "tasks_per_s": round(-(-args.tasks // args.paths_per_task)
                                     / statistics.median(row[way]["wall_s"] for row in rounds), 1),
                "in_task_us": round(statistics.median(row[way]["in_task_us"] for row in rounds), 2),
            }
        if "shmpool" in ways and args.paths_per_task == 1:
            lookup["shmpool"]["in_task_split_us"] = {
                "reader": round(statistics.median(row["shmpool"]["reader_us"] for row in rounds), 2),
                "batch": round(statistics.median(row["shmpool"]["in_task_us"] - row["shmpool"]["reader_us"]
                                                 for row in rounds), 2)}
        for way in (w for w in ways if w != "scatter"):
            lookup[way]["wall_ratio_to_scatter"] = round(statistics.median(
                row[way]["wall_s"] / row["scatter"]["wall_s"] for row in rounds), 3)
            lookup[way]["in_task_ratio_to_scatter"] = round(statistics.median(
                row[way]["in_task_us"] / row["scatter"]["in_task_us"] for row in rounds), 3)
        del scattered
        met = {"lookup_wall": lookup["shmpool"]["wall_ratio_to_scatter"] <= LOOKUP_WALL_GOAL} if "shmpool" in ways else {}
        distribute = {}
        if not args.lookup_only:
            distribute = measure_distribute(client, data, paths, args)
            met.update({
                "memory": all(m["shmpool_to_scatter"] <= (0.3 if data_bytes >= 200e6 else 1.0)
                              for m in memory.values()),
                "publish": distribute["idle"]["shmpool"]["ratio_to_scatter"] <= 0.5,
                "republish_under_load": distribute["under_load"]["shmpool"]["ratio_to_scatter"] <= 1.0,
            })
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
        "config": {"tasks": args.tasks, "paths_per_task": args.paths_per_task, "steps_per_path": 20, "rounds": args.rounds, "hosts": len(keys),
                   "workers_per_host": args.workers, "threads_per_worker": 1, "dimensions": args.dims,
                   "layers_per_dimension": args.layers, "layer_bytes": args.layer_bytes,
                   "data_bytes": data_bytes, "active_memory_manager": bool(args.amm),
                   "host_memory_limit": args.memory_limit, "lookup_only": bool(args.lookup_only),
                   "ways": ways},
        "lookup_tasks": lookup,
        "rounds": rounds,
        "distribute": distribute,
        "memory": memory,
        "goal": GOAL,
        "goal_met": met,
        "leftovers": benchlib.shm_leftovers(list(instances.values())),
    }, args.out_dir, save=not args.no_save)


def measure_memory(client, data, paths, work, keys, instances, host_of, pids):
    """Per host: shmpool's cost (daemon + workers' growth), then global's, then scatter's, each
    the growth over the step before. Returns it and the scattered future (kept for the tasks)."""
    from shmpool import _dask_host as host

    workers = list(host_of)
    base = {a: pss(pids[a]) for a in workers}
    client.run(attach_reader)
    run_way(client, "shmpool", paths[:2000], None, work)  # warm: every worker maps every dimension
    after_shm = {a: pss(pids[a]) for a in workers}
    rss = client.run(worker_rss)
    memory = {}
    for key in keys:
        marker = f"shmpool.{instances[key]}."
        daemon = host.ready_pid(instances[key])
        mine = [a for a in workers if host_of[a] == key]
        growth = sum(after_shm[a] - base[a] for a in mine)
        memory[key] = {
            "workers": len(mine),
            "daemon_pss_bytes": pss(daemon),
            "shmpool_worker_pss_growth_bytes": int(growth),
            "shmpool_pss_bytes": pss(daemon) + int(growth),
            "shmpool_mapped_pss_bytes": mapped_pss(daemon, marker) + sum(mapped_pss(pids[a], marker) for a in mine),
            "dask_sees": [{"rss_bytes": rss[a], "pss_bytes": after_shm[a]} for a in mine],
        }
    client.run(install_global, data)
    after_global = {a: pss(pids[a]) for a in workers}
    (scattered,) = client.scatter([data], broadcast=True)  # one future for the whole dict
    client.submit(task_scatter, scattered, paths[0], pure=False).result()
    after_scatter = {a: pss(pids[a]) for a in workers}
    for key in keys:
        mine = [a for a in workers if host_of[a] == key]
        for way, before, after in (("global", after_shm, after_global), ("scatter", after_global, after_scatter)):
            grow = [after[a] - before[a] for a in mine]
            memory[key][f"{way}_pss_growth_bytes"] = int(sum(grow))
            memory[key][f"{way}_pss_growth_per_worker_bytes"] = int(statistics.mean(grow))
        memory[key]["disk_pss_held_bytes"] = 0
        for way in ("scatter", "global"):
            memory[key][f"shmpool_to_{way}"] = round(
                memory[key]["shmpool_pss_bytes"] / max(1, memory[key][f"{way}_pss_growth_bytes"]), 3)
    return memory, scattered


def measure_distribute(client, data, paths, args) -> dict:
    """Giving every host all the data, idle and while lookup tasks of the same way run."""
    import shmpool.dask as sd

    by_dim: dict[int, dict[int, bytes]] = {}
    for (dim, lid), content in data.items():
        by_dim.setdefault(dim, {})[lid] = content

    def shmpool_way() -> None:
        for dim, layers in sorted(by_dim.items()):
            sd.publish(client, dim, f"bench{dim}", layers)

    def scatter_way() -> None:
        (fut,) = client.scatter([data], broadcast=True)
        client.submit(task_scatter, fut, paths[0], pure=False).result()
        del fut

    def global_way() -> None:
        client.run(install_global, data)

    ways = {"shmpool": shmpool_way, "scatter": scatter_way, "global": global_way}
    out = {}
    for label, load in (("idle", 0), ("under_load", args.load_tasks)):
        times: dict[str, list[float]] = {w: [] for w in ways}
        for r in range(args.publish_rounds):
            order = list(ways)[r % 3:] + list(ways)[:r % 3]
            for way in order:
                running = None
                if load:
                    if way == "scatter":
                        (old,) = client.scatter([data], broadcast=True)
                        running = client.map(task_scatter, [old] * load, paths[:load], pure=False)
                    else:
                        task = task_shmpool if way == "shmpool" else task_global
                        running = client.map(task, paths[:load], pure=False)
                    time.sleep(0.5)  # the map is under way
                t0 = time.perf_counter()
                ways[way]()
                times[way].append(time.perf_counter() - t0)
                if running is not None:
                    client.gather(running)
                    del running
        out[label] = {w: {"median_s": round(statistics.median(t), 3), "rounds": len(t)} for w, t in times.items()}
        for w in ways:
            out[label][w]["ratio_to_scatter"] = round(statistics.median(
                a / b for a, b in zip(times[w], times["scatter"])), 3)
    return out


def run_way(client, way: str, paths, scattered, work: Path, expected: int | None = None, per_task: int = 1) -> dict:
    """``paths`` through ``way``: a task per path, or (``per_task`` > 1) per chunk of that many
    paths; ``in_task_us`` stays per path."""
    task, prefix = {"shmpool": (task_shmpool, ()), "scatter": (task_scatter, (scattered,)),
                    "global": (task_global, ()), "noop": (task_noop, ()),
                    "disk": (task_disk, (str(work / "data"),))}[way]
    t0 = time.perf_counter()
    if per_task == 1:
        futures = client.map(task, *([p] * len(paths) for p in prefix), paths, pure=False)
    else:
        chunks = [paths[i:i + per_task] for i in range(0, len(paths), per_task)]
        futures = client.map(task_chunk, [task] * len(chunks), chunks,
                             *([p] * len(chunks) for p in prefix), pure=False)
    results = client.gather(futures)
    wall = time.perf_counter() - t0
    total = sum(r[0] for r in results)
    if expected is not None and total != expected and way != "noop":
        raise RuntimeError(f"{way}: tasks read {total} bytes, expected {expected}")
    out = {"wall_s": round(wall, 3),
           "in_task_us": round(statistics.median(r[1] for r in results) / 1e3 / per_task, 2)}
    if way == "shmpool" and per_task == 1:
        out["reader_us"] = round(statistics.median(r[2] for r in results) / 1e3, 2)
    return out


if __name__ == "__main__":
    main()
