"""The main job of ``scripts/run``: serve the sample, read it all back, then a short stress run.

1. Serve the sample (built once into the runtime folder), and read every layer back from a second
   process, verifying each checksum.
2. Start a coordinator with workers on the sample and run a short stress (64 client threads,
   crystallization every 0.5 s, one worker SIGKILLed now and then); print its table.

Exits non-zero if any layer read back differs, the stress run saw an error, a torn read, a lost
job or a leaked block, or anything of either instance is left in /dev/shm afterwards.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.queues import Queue
from typing import Any

from ..substrate._log import logger

import shmpool
from shmpool.substrate.names import list_objects

from ..coordinator import Coordinator
from ..data.sample import sample_dir


def read_everything(name: str, results: Queue[dict[str, Any]]) -> None:
    """In a separate process: attach, read every layer of every dimension, verify its checksum."""
    timings = []
    layers = bad = nbytes = 0
    with shmpool.attach(name) as reader:
        dims = reader.dimensions()
        for dim in dims:
            for ctx in reader.scan(dim):
                t0 = time.perf_counter_ns()
                again = reader.load_layer_context(dim, ctx.layer_id)
                timings.append(time.perf_counter_ns() - t0)
                layers += 1
                nbytes += len(again.content)
                bad += not again.verify()
    timings.sort()
    results.put({"dimensions": len(dims), "layers": layers, "bytes": nbytes, "corrupt": bad,
                 "lookup_median_us": timings[len(timings) // 2] / 1e3,
                 "lookup_p99_us": timings[int(len(timings) * 0.99)] / 1e3})


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/run", description=__doc__.splitlines()[0])
    parser.add_argument("--stress-seconds", type=float, default=5.0, help="0 skips the stress run")
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args(argv)
    logger.enable("shmpool")  # every subpackage, the coordinator's and the workers' included
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("SHMPOOL_LOG_LEVEL", "WARNING"))
    name = f"demo-{os.getpid()}"
    # The sample built once into the runtime folder (what data_dir=shmpool.SAMPLE serves), so a
    # second run starts warm: its files are unchanged and the validation cache vouches for them.
    t0 = time.perf_counter()
    folder = sample_dir()
    built = time.perf_counter() - t0
    files = sorted(folder.glob("*.region"))
    with Coordinator(name, data_dir=folder) as coord:
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        proc = ctx.Process(target=read_everything, args=(name, results))
        proc.start()
        summary = results.get(timeout=120)
        proc.join(30)
        stats = coord.stats()
    leftovers = list_objects(name)
    summary.update({
        "region_files": len(files), "build_seconds": round(built, 3),
        "startup_ms": round(stats["startup_ms"], 2), "load_ms": round(stats["load_ms"], 2),
        "load": {k: round(v, 2) if isinstance(v, float) else v for k, v in stats["load"].items()
                 if k != "verify_cache"},
        "verify_cache_hits": (stats["load"]["verify_cache"] or {}).get("hits"),
        "used_bytes": stats["used_bytes"],
        "memory_limit": stats["memory_limit"], "utilization": round(stats["utilization"], 4),
        "leftovers_in_dev_shm": leftovers[0] + leftovers[1],
    })
    print(json.dumps(summary, indent=2))
    ok = summary["corrupt"] == 0 and summary["layers"] > 0 and not summary["leftovers_in_dev_shm"]
    print("OK: every layer read back intact from a second process" if ok else "FAILED: read-back",
          file=sys.stderr)
    if args.stress_seconds > 0:
        ok = _short_stress(f"demo-stress-{os.getpid()}", args.stress_seconds, args.clients) and ok
    return 0 if ok else 1


def _short_stress(name: str, seconds: float, clients: int) -> bool:
    from rich.console import Console

    from .stress import render_report, run_stress

    result = run_stress(name, clients=clients, duration=seconds, crystallize_every=0.5,
                        kill_workers=True, progress=sys.stderr.isatty())
    Console().print(render_report(result))
    return bool(result["ok"])


if __name__ == "__main__":
    sys.exit(main())
