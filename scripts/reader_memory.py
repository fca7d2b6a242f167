"""Where one reader process's memory goes, step by step, per mapping; prints JSON.

The breakdown behind bench_peers' memory row (docs/performance.md, issue 22). One spawned reader
process (the start method bench_peers uses, so nothing is inherited copy-on-write) imports what
bench_peers' ``_pss_child`` imports, then, each step released by the parent:

0. (unless ``--no-harness-warm-up``) the harness's ``_touch`` once on a buffer of its own, then
   the baseline, as bench_peers does;
1. ``attach``: ``shmpool.attach(name)`` (or an LMDB environment and a long read txn);
2. ``first_lookup``: one lookup (maps one generation);
3. ``touch_all``: every layer looked up and every page of its content read (as ``_pss_child``).

After each step the parent reads the child's ``/proc/PID/smaps`` (the child allocates nothing to
measure itself) and reports, per class of mapping (heap, anonymous, the pool segments, the
control segment, the data file, shared libraries, ...), the growth of Pss, Private_Dirty and
Private_Clean in kB. With ``--tracemalloc`` a second child repeats the steps with tracemalloc
on and reports the Python heap's growth per step and its top source lines (tracemalloc's own
bookkeeping then inflates the smaps figures, so they come from the first child).

Usage: ``.venv/bin/python scripts/reader_memory.py [--tracemalloc] [--systems shmpool,lmdb]``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402
import bench_peers  # noqa: E402  (its children import this much before their baseline)

import shmpool  # noqa: E402
from shmpool.coordinator import Coordinator  # noqa: E402
from shmpool.data.sample import build_sample  # noqa: E402

PREFIX = "reader-mem"
STEPS = ("attach", "first_lookup", "touch_all")
TIMEOUT = 120.0
FIELDS = ("Rss", "Pss", "Private_Dirty", "Private_Clean", "Shared_Dirty", "Shared_Clean")


def _child(system: str, target: str, keys, trace: bool, warm_up: bool, go, results) -> None:
    try:
        bench_peers.import_reader_code()  # the same modules as bench_peers' _pss_child before the baseline

        if warm_up:
            bench_peers._touch(bytes(2 * bench_peers.PAGE))  # as bench_peers' _pss_child does
        if trace:
            import tracemalloc
            tracemalloc.start(8)
        # The harness's own first uses before the baseline, so that no step is charged with them:
        # the result queue's feeder thread (started by the first put) and, with tracemalloc, the
        # snapshot filters' patterns (tracemalloc.Filter matches file names with fnmatch, which
        # compiles a regular expression on first use: it showed up as the first lookup's).
        results.put(("ready", os.getpid()))
        if trace:
            snaps = [tracemalloc.take_snapshot()]
            _heap_step(snaps[0], snaps[0])
            del snaps
            import gc
            gc.collect()  # the compile's garbage, not the attach's
            snaps = [tracemalloc.take_snapshot()]
        keep = []
        for step in STEPS:
            go.get(timeout=TIMEOUT)
            if system == "shmpool":
                if step == "attach":
                    reader = shmpool.attach(target)
                elif step == "first_lookup":
                    bench_peers._touch(reader.load_layer_context(*keys[0]).content)
                else:
                    for d, l in keys:
                        bench_peers._touch(reader.load_layer_context(d, l).content)
            else:
                if step == "attach":
                    env = bench_peers._lmdb_env(target)
                    txn = env.begin(buffers=True)
                elif step == "first_lookup":
                    bench_peers._touch(txn.get(bench_peers.KEY.pack(*keys[0])))
                else:
                    for d, l in keys:
                        bench_peers._touch(txn.get(bench_peers.KEY.pack(d, l)))
            if trace:
                snaps.append(tracemalloc.take_snapshot())
                keep.append(_heap_step(snaps[-2], snaps[-1]))
            results.put((step, keep[-1] if trace else None))
        go.get(timeout=TIMEOUT)
    except BaseException as exc:
        results.put(("error", repr(exc)))
        raise


def _heap_step(before, after) -> dict:
    """tracemalloc growth between two snapshots: total and the top 12 lines (tracemalloc's own
    frames filtered out)."""
    import tracemalloc

    skip = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, __file__)]
    diff = after.filter_traces(skip).compare_to(before.filter_traces(skip), "lineno")
    return {"python_heap_growth_bytes": sum(d.size_diff for d in diff),
            "top_lines": [{"where": f"{Path(d.traceback[0].filename).name}:{d.traceback[0].lineno}",
                           "bytes": d.size_diff, "blocks": d.count_diff} for d in diff[:12] if d.size_diff]}


def _vma_class(path: str, name: str) -> str:
    if path == "[heap]":
        return "heap (brk)"
    if not path:
        return "anonymous (malloc arenas, obmalloc, thread stacks)"
    if path.startswith("/dev/shm/"):
        base = path[len("/dev/shm/"):]
        if ".pool" in base:
            return "pool segments (the data)"
        return f"/dev/shm/{base.replace(name, 'NAME')}"
    if path.endswith("data.mdb"):
        return "lmdb data.mdb (the data)"
    if path.endswith("lock.mdb"):
        return "lmdb lock.mdb"
    if path.startswith("["):
        return path
    return "files: " + Path(path).name.split(".")[0]


def smaps(pid: int, name: str) -> dict[str, dict[str, int]]:
    """{mapping class: {field: kB}} of one process, summed over its VMAs."""
    out: dict[str, dict[str, int]] = {}
    cur: dict[str, int] | None = None
    with open(f"/proc/{pid}/smaps", encoding="utf-8") as fh:
        for line in fh:
            head, _, rest = line.partition(" ")
            if "-" in head and not head.endswith(":"):
                parts = line.split(None, 5)
                cls = _vma_class(parts[5].strip() if len(parts) > 5 else "", name)
                cur = out.setdefault(cls, dict.fromkeys(FIELDS, 0))
            elif cur is not None and head[:-1] in FIELDS:
                cur[head[:-1]] += int(rest.split()[0])
    return out


def _diff(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out = {}
    for cls in sorted(set(a) | set(b)):
        zero = dict.fromkeys(FIELDS, 0)
        d = {f: b.get(cls, zero)[f] - a.get(cls, zero)[f] for f in FIELDS}
        if any(d.values()):
            out[cls] = d
    out["total"] = {f: sum(v[f] for k, v in out.items()) for f in FIELDS}
    return out


def run(system: str, target: str, name: str, keys, trace: bool, warm_up: bool) -> dict:
    ctx = mp.get_context("spawn")
    go, results = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_child, args=(system, target, keys, trace, warm_up, go, results), name="reader-memory")
    p.start()
    try:
        kind, pid = results.get(timeout=TIMEOUT)
        assert kind == "ready", pid
        seen = [smaps(p.pid, name)]
        out: dict = {"steps": {}}
        for step in STEPS:
            go.put(step)
            kind, heap = results.get(timeout=TIMEOUT)
            if kind == "error":
                raise RuntimeError(heap)
            seen.append(smaps(p.pid, name))
            out["steps"][step] = {"smaps_growth_kB": _diff(seen[-2], seen[-1])}
            if heap is not None:
                out["steps"][step]["tracemalloc"] = heap
        out["whole_kB"] = _diff(seen[0], seen[-1])
        go.put("exit")
    finally:
        p.join(TIMEOUT)
        if p.is_alive():
            p.kill()
    return out


def main(argv=None) -> int:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--tracemalloc", action="store_true", help="also a child with tracemalloc on")
    parser.add_argument("--systems", default="shmpool,lmdb")
    parser.add_argument("--no-harness-warm-up", action="store_true",
                        help="baseline before bench_peers' _touch ran once (see bench_peers --no-harness-warm-up)")
    args = parser.parse_args(argv)
    name = benchlib.instance_name(PREFIX)
    payload: dict = {}
    try:
        with tempfile.TemporaryDirectory(prefix="reader-mem-") as tmp:
            tmp = Path(tmp)
            os.environ["SHMPOOL_RUNTIME_DIR"] = str(tmp)
            build_sample(tmp / "sample")
            with Coordinator(name, data_dir=tmp / "sample", workers=1):
                with shmpool.attach(name) as reader:
                    keys = [(d, l) for d in reader.dimensions() for l in reader.layer_ids(d)]
                    lmdb_path = tmp / "lmdb"
                    data_bytes = bench_peers._load_lmdb(lmdb_path, reader)
                payload["data"] = {"layers": len(keys), "bytes": data_bytes}
                for system in args.systems.split(","):
                    target = name if system == "shmpool" else str(lmdb_path)
                    warm = not args.no_harness_warm_up
                    payload[system] = run(system, target, name, keys, False, warm)
                    if args.tracemalloc:
                        traced = run(system, target, name, keys, True, warm)
                        payload[system]["tracemalloc"] = {s: v["tracemalloc"] for s, v in traced["steps"].items()}
    finally:
        leftovers = benchlib.shm_leftovers()
    payload["leftovers_in_dev_shm"] = leftovers
    benchlib.write_result("reader_memory", payload, args.out_dir, save=not args.no_save)
    return 1 if leftovers else 0


if __name__ == "__main__":
    raise SystemExit(main())
