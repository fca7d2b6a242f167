"""Start-up of the 14-dimension sample: cold (no validation cache), warm (cache), off; prints JSON.

Each round times ``Coordinator(name, data_dir, workers=0).start()`` once per mode, the modes in
a rotating order (the machine is shared and noisy, so modes are compared within a round):

* ``cold``: the validation cache file removed first: every file is verified in full (CRC32 of
  every layer, UTF-8 of every text layer) and recorded, and the cache is saved.
* ``warm``: the cache from the previous start: unchanged files skip the content checks.
* ``off``: ``verify_cache=False``: verified in full, nothing read or written.
* ``baseline`` (with ``--baseline REV``): the same start-up in a child process running the tree
  of git revision REV (``git archive``), timed inside the child around ``start()`` only.

Where the time goes comes from ``stats()["load"]`` (``copy_ms``: sendfile into the pools;
``verify_ms``: content checks; ``store_ms``: copies made into the store) and ``load_ms``; the
rest of ``load_ms`` is segment creation, page reservation (``posix_fallocate`` inside
allocation), structural checks and publishing. ``floors`` times the alternatives alone, in the
same rounds: the 31.8 MB written into a fresh /dev/shm file by sendfile (the floor of any copy),
into a sealed memfd (a copy nobody, root included, can shrink: the same floor), against opening,
checking and mapping the 14 store copies (what mapping costs).
``start_cpu_ms`` is the CPU time (user + system, every thread of the process, the kernel's page
allocation included) spent in ``start()``: on a shared machine, where wall time includes waiting
for a core, it is the figure the load disturbs least.
Not included anywhere: Python start-up and imports, building the files, ``stop()``.
"""

from __future__ import annotations

import fcntl
import gc
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import benchlib  # noqa: E402
from benchlib import clock  # noqa: E402

from shmpool.coordinator import Coordinator  # noqa: E402
from shmpool.coordinator.verified import RACY_NS, default_cache_path  # noqa: E402
from shmpool.data.sample import build_sample  # noqa: E402
from shmpool.substrate.mapped_files import store_dir  # noqa: E402

PREFIX = "bench-st"
TARGET_MS = 15.0   # issue 22: warm start of the 14-dimension sample
ROOT = Path(__file__).resolve().parent.parent
MODES = ("warm", "cold", "warm_copy", "off")

_CHILD = """
import gc, json, sys, time
sys.path.insert(0, sys.argv[1])
from loguru import logger
logger.remove(); logger.add(sys.stderr, level="WARNING")
import shmpool.coordinator as coordinator
assert coordinator.__file__.startswith(sys.argv[1]), coordinator.__file__
from shmpool.coordinator import Coordinator
c = Coordinator(sys.argv[2], data_dir=sys.argv[3], workers=0)
gc.collect()
c0 = time.process_time_ns(); t0 = time.perf_counter_ns(); c.start(); t = time.perf_counter_ns() - t0
cpu = time.process_time_ns() - c0
load = c.stats()["load_ms"]
c.stop()
print(json.dumps({"start_ms": t / 1e6, "start_cpu_ms": cpu / 1e6, "load_ms": load}))
"""


# What each mode must have done, as (files mapped, copies made in the store, files trusted).
_EXPECT = {"warm": (14, 0, 0), "cold": (14, 14, 0), "warm_copy": (0, 0, 14), "off": (0, 0, 0)}


def _one(mode: str, data: Path, *, check: bool = True) -> dict:
    if mode == "cold":
        default_cache_path().unlink(missing_ok=True)
        shutil.rmtree(store_dir(), ignore_errors=True)
    coord = Coordinator(benchlib.instance_name(PREFIX), data_dir=data, workers=0, verify_cache=mode != "off",
                        mapped_regions=mode in ("warm", "cold"))
    gc.collect()
    c0 = time.process_time_ns()
    t0 = clock()
    coord.start()
    elapsed = clock() - t0
    cpu = time.process_time_ns() - c0
    try:
        stats = coord.stats()
        assert stats["dimensions"] == 14, stats["dimensions"]
        load = stats["load"]
        done = (load["files_mapped"], load["files_stored"], load["files_trusted"])
        assert not check or done == _EXPECT[mode], (mode, load)
        return {"start_ms": elapsed / 1e6, "start_cpu_ms": cpu / 1e6, "load_ms": stats["load_ms"], "copy_ms": load["copy_ms"],
                "verify_ms": load["verify_ms"], "store_ms": load["store_ms"], "shm_used_bytes": stats["used_bytes"]}
    finally:
        coord.stop()


def _floors(data: Path) -> dict:
    """The two alternatives alone: every file sendfile'd into a fresh /dev/shm file (pages
    allocated and filled, as any copy must), against the store copies opened, checked and mapped."""
    files = sorted(data.iterdir())
    target = Path("/dev/shm") / f"{benchlib.instance_name(PREFIX)}.floor"
    t0 = clock()
    out = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            size, done = os.fstat(fd).st_size, 0
            while done < size:
                done += os.sendfile(out, fd, done, size - done)
            os.close(fd)
    finally:
        os.close(out)
        copy = clock() - t0
        target.unlink()
    t0 = clock()
    sealed = os.memfd_create("bench-st", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)  # a copy nobody can shrink
    try:
        at = 0
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            size, done = os.fstat(fd).st_size, 0
            os.lseek(sealed, at, os.SEEK_SET)
            while done < size:
                done += os.sendfile(sealed, fd, done, size - done)
            at += size
            os.close(fd)
        fcntl.fcntl(sealed, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    finally:
        os.close(sealed)
    memfd = clock() - t0
    t0 = clock()
    maps = []
    for path in sorted(store_dir().glob("*.region")):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        st = os.fstat(fd)
        assert st.st_mode & 0o777 == 0o400
        maps.append(mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ))
        os.close(fd)
    mapped = clock() - t0
    for m in maps:
        m.close()
    return {"sendfile_into_tmpfs_ms": copy / 1e6, "sealed_memfd_copy_ms": memfd / 1e6, "open_check_map_ms": mapped / 1e6}


def _baseline(tree: Path, data: Path) -> dict:
    name = benchlib.instance_name(PREFIX)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tree), name, str(data)], capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _extract(rev: str, into: Path) -> Path:
    archive = into / "baseline.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev], stdout=f, check=True)
    tree = into / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    # The installed layout (pyproject's package-dir): coordinator/ and workers/ are shmpool's
    # subpackages; without these links the editable install's finder would serve ours instead.
    for sub in ("coordinator", "workers"):
        if (tree / sub).is_dir() and not (tree / "shmpool" / sub).exists():
            (tree / "shmpool" / sub).symlink_to(tree / sub)
    # git archive has the compiled core's sources, not its build: lend it ours when they are the
    # same sources (the child then runs the baseline's Python over the same C).
    ours, theirs = ROOT / "shmpool" / "_core", tree / "shmpool" / "_core"
    if theirs.is_dir():
        sources = sorted(p.name for p in ours.iterdir() if p.suffix in (".pyx", ".pxd", ".h"))
        if all((theirs / n).is_file() and (theirs / n).read_bytes() == (ours / n).read_bytes() for n in sources):
            for built in ours.glob("*.so"):
                shutil.copy2(built, theirs / built.name)
        else:
            raise SystemExit(f"--baseline {rev}: its compiled core differs from this tree's; build it first")
    return tree


def _summary(rows: list[dict]) -> dict:
    out = {}
    for key in rows[0]:
        xs = np.array([r[key] for r in rows])
        out[key] = {"median": round(float(np.median(xs)), 2), "p90": round(float(np.percentile(xs, 90)), 2),
                    "min": round(float(xs.min()), 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = benchlib.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--baseline", metavar="REV", help="also time the tree of this git revision")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here (e.g. docs/results/...)")
    args = parser.parse_args(argv)
    benchlib.raise_on_sigterm()
    benchlib.quiet_logging()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        os.environ["SHMPOOL_RUNTIME_DIR"] = tmp  # its own cache and lock files; children inherit it
        data = Path(tmp) / "sample"
        nbytes = sum(p.stat().st_size for p in build_sample(data))
        tree = _extract(args.baseline, Path(tmp)) if args.baseline else None
        modes = MODES + (("baseline",) if tree else ())
        time.sleep(RACY_NS / 1e9 * 2)  # files this young are verified but not recorded
        _one("warm", data, check=False)  # page cache and first-use costs, and a cache for the first warm round
        _one("warm_copy", data, check=False)  # the validation cache the first warm_copy round uses
        rows: dict[str, list[dict]] = {m: [] for m in modes}
        floors: list[dict] = []
        try:
            for r in range(args.rounds):
                for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                    rows[mode].append(_baseline(tree, data) if mode == "baseline" else _one(mode, data))
                    if mode == "cold":
                        _one("warm_copy", data, check=False)  # the validation cache cold removed
                floors.append(_floors(data))
        finally:
            leftovers = benchlib.shm_leftovers()
    result = {m: _summary(v) for m, v in rows.items()}

    def ratio(mode: str, against: str) -> float:  # per round, against the mode measured in the same round
        per_round = [a["start_ms"] / b["start_ms"] for a, b in zip(rows[mode], rows[against])]
        return round(statistics.median(per_round), 3)

    ratios = {"warm_over_warm_copy_median": ratio("warm", "warm_copy"), "cold_over_off_median": ratio("cold", "off")}
    if tree:
        for m in MODES:
            ratios[f"{m}_over_baseline_median"] = ratio(m, "baseline")
    warm = result["warm"]["start_ms"]
    warm_cpu = result["warm"]["start_cpu_ms"]
    payload = {
        "what": __doc__.split("\n\n")[0],
        "rounds": args.rounds, "baseline_rev": args.baseline, "files": 14,
        "bytes": nbytes,
        "modes": result, "ratios": ratios, "floors": _summary(floors), "raw": rows,
        "target_ms": TARGET_MS, "warm_median_ms": warm["median"], "warm_p90_ms": warm["p90"],
        "warm_median_met": warm["median"] <= TARGET_MS,
        "warm_cpu_median_ms": warm_cpu["median"], "warm_cpu_p90_ms": warm_cpu["p90"],
        "warm_cpu_median_met": warm_cpu["median"] <= TARGET_MS,
        "warm_copy_median_ms": result["warm_copy"]["start_ms"]["median"],
        "leftovers_in_dev_shm": leftovers,
    }
    benchlib.write_result("bench_startup", payload, args.out_dir, save=not args.no_save, out_file=args.out)
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
