"""CPU seconds per test, to find what makes the suite expensive on a loaded 2-core machine.

Wall time (``--durations``) on a shared machine says how long a test waited for a core, not what
it costs; this plugin records, per test (set-up, call and teardown), the CPU of the pytest process
(``RUSAGE_SELF``) and of the children it reaped meanwhile (``RUSAGE_CHILDREN``), one JSON line each,
into ``$CPU_PER_TEST_DIR`` (default /tmp/cpu-per-test), one file per xdist worker:

    PYTHONPATH=tests python -m pytest -p _cpu_per_test -n 2 ...
    python tests/_cpu_per_test.py /tmp/cpu-per-test     # files ranked by CPU, then the top tests

What it misses: CPU of processes not reaped by the pytest process during the test (a daemon that
double-forked, a multiprocessing fork server, a child reaped in a later test: a module-scoped
coordinator's workers count in the test whose teardown stops it). ``/usr/bin/time`` around the
whole run is the total to compare with.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

OUT = Path(os.environ.get("CPU_PER_TEST_DIR", "/tmp/cpu-per-test"))
_log: IO[str] | None = None


def _cpu() -> tuple[float, float]:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    global _log
    if _log is None:
        OUT.mkdir(parents=True, exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        _log = open(OUT / f"{worker}-{os.getpid()}.jsonl", "a", encoding="utf-8")  # open for the session
    me0, children0 = _cpu()
    t0 = time.monotonic()
    try:
        return (yield)
    finally:
        me1, children1 = _cpu()
        _log.write(json.dumps({"id": item.nodeid, "self": round(me1 - me0, 3),
                               "children": round(children1 - children0, 3),
                               "wall": round(time.monotonic() - t0, 3)}) + "\n")
        _log.flush()


def _report(folder: Path, files: int = 40, tests: int = 30) -> None:
    rows = [json.loads(line) for path in folder.glob("*.jsonl") for line in path.open(encoding="utf-8")]
    by_file: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for row in rows:
        total = by_file[row["id"].split("::")[0]]
        total[0] += row["self"] + row["children"]
        total[1] += row["self"]
        total[2] += row["children"]
        total[3] += 1
    print(f"{sum(t[0] for t in by_file.values()):.1f} s of CPU over {len(rows)} tests")
    print(f"{'cpu_s':>7} {'self_s':>7} {'child_s':>7} {'tests':>5}  file")
    for name, (cpu, me, children, count) in sorted(by_file.items(), key=lambda kv: -kv[1][0])[:files]:
        print(f"{cpu:7.1f} {me:7.1f} {children:7.1f} {int(count):5d}  {name}")
    print(f"\n{'cpu_s':>7}  test")
    for row in sorted(rows, key=lambda r: -(r["self"] + r["children"]))[:tests]:
        print(f"{row['self'] + row['children']:7.2f}  {row['id']}")


if __name__ == "__main__":
    _report(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
