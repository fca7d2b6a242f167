"""Lookups per CPU-second of one reader thread against many in one process, by the number of
dimensions the lookups spread over; prints JSON.

The 128-reader goal of issue 22 (lookups per CPU-second of 128 readers within 0.9 of one
reader's) is missed by the rows that run 16 or 32 threads per process (bench_readers,
bench_peers), and this isolates why: one process attaches to the built-in sample (14 dimensions
of 200 layers), and for each key set its threads look up random keys of it for ``--seconds``
(each thread its own 4,096 random picks, as bench_readers' loop: 256 lookups between clock
reads), once with one thread and once with ``--threads``. ``ratio`` is the second's lookups per
thread CPU-second over the first's. Key sets: all 14 dimensions; the first ``d`` dimensions,
all their layers; and 14 dimensions, ``n`` layers each: whether the ratio follows the number of
dimensions or the number of layers (table bytes). ``--cpu N`` pins the process to one core (no
thread crosses cores), ``--switch-interval`` sets ``sys.setswitchinterval``.

Usage: ``.venv/bin/python scripts/bench_threads_by_dimensions.py [--threads 16] [--rounds 2]``.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

PICKS = 4096
SLICE = 256


def _rate(name: str, keys: list[tuple[int, int]], threads: int, seconds: float) -> float:
    """Lookups per thread CPU-second of ``threads`` threads looking up random ``keys``."""
    import shmpool

    with shmpool.attach(name) as reader:
        for dim, lid in keys:  # every generation mapped: first-use costs are not lookups
            reader.load_layer_context(dim, lid)
        load = reader.load_layer_context
        counts, cpu = [0] * threads, [0.0] * threads
        barrier = threading.Barrier(threads)

        def loop(t: int) -> None:
            rng = random.Random(t)
            picks = [rng.choice(keys) for _ in range(PICKS)]
            barrier.wait()
            n, end, c0 = 0, time.monotonic() + seconds, time.thread_time()
            while time.monotonic() < end:
                for dim, lid in picks[(n % PICKS):(n % PICKS) + SLICE]:
                    load(dim, lid)
                n += SLICE
            cpu[t], counts[t] = time.thread_time() - c0, n

        pool = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        return sum(counts) / sum(cpu)


def main(argv=None) -> int:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=2, help="each figure is the median of this many")
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this core")
    parser.add_argument("--switch-interval", type=float, default=None)
    args = parser.parse_args(argv)
    benchlib.quiet_logging()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    import shmpool
    from shmpool.coordinator import Coordinator
    from shmpool.data.sample import build_sample

    folder = Path(tempfile.mkdtemp(prefix="bench-threads-dims-"))
    build_sample(folder)
    name = benchlib.instance_name("bench-threads-dims")
    rows = []
    with Coordinator(name, data_dir=folder, workers=0):
        with shmpool.attach(name) as reader:
            layers = {dim: reader.layer_ids(dim) for dim in sorted(reader.dimensions())}
        dims = list(layers)
        sets = {"14 dimensions, all layers": [(d, lid) for d in dims for lid in layers[d]]}
        for count in (1, 2, 4, 7, 10):
            sets[f"{count} dimensions, all layers"] = [(d, lid) for d in dims[:count] for lid in layers[d]]
        for per in (2, 8):
            sets[f"14 dimensions, {per} layers each"] = [(d, lid) for d in dims for lid in layers[d][:per]]
        for label, keys in sets.items():
            one, many = [], []
            for _ in range(args.rounds):
                one.append(_rate(name, keys, 1, args.seconds))
                many.append(_rate(name, keys, args.threads, args.seconds))
            rows.append({"keys": label, "dimensions": len({d for d, _ in keys}), "distinct_keys": len(keys),
                         "one_thread_per_cpu_s": round(statistics.median(one)),
                         f"{args.threads}_threads_per_cpu_s": round(statistics.median(many)),
                         "ratio": round(statistics.median(m / o for m, o in zip(many, one)), 3)})
            print(rows[-1], file=sys.stderr, flush=True)
    benchlib.write_result("bench_threads_by_dimensions", {
        "config": {"threads": args.threads, "seconds": args.seconds, "rounds": args.rounds, "cpu": args.cpu,
                   "switch_interval": sys.getswitchinterval(), "picks_per_thread": PICKS},
        "rows": rows, "leftovers_in_dev_shm": benchlib.shm_leftovers([name])}, args.out_dir, save=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
