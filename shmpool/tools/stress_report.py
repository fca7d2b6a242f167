"""What a ``shmpool stress`` run reports: the table, the JSON, and one PNG to look at.

The JSON carries the whole-run latency percentiles and histogram, and the same operations cut
into 100 ms windows (count, throughput, p50/p99/p99.9), with the moments workers were killed
and generations published, so a reader can see what each fault did to latency. The windows
partition the operations: their counts add up to the totals exactly (each operation falls in
the window of the moment it completed).

The PNG (matplotlib, the ``plot`` extra) is the histogram on the left and, beside it, the
windows over time: latency percentiles above, throughput below, kills and publishes drawn as
vertical lines across both.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OPS", "BIN_EDGES_US", "WINDOW_S", "percentiles", "histogram", "windows", "render_report",
           "write_outputs"]

OPS = ("lookup", "load_contexts")
# Histogram bins: 1 µs to 10 s, 20 per decade; small enough to keep in the JSON result.
BIN_EDGES_US = np.logspace(0, 7, 7 * 20 + 1)
WINDOW_S = 0.1


def percentiles(ns: np.ndarray) -> dict[str, Any]:
    """Count, p50, p99, p99.9 and max of latencies in ns, as µs (None when there are none)."""
    if ns.size == 0:
        return {"count": 0, "p50_us": None, "p99_us": None, "p999_us": None, "max_us": None}
    p50, p99, p999 = np.percentile(ns, [50, 99, 99.9]) / 1e3
    return {"count": int(ns.size), "p50_us": round(float(p50), 1), "p99_us": round(float(p99), 1),
            "p999_us": round(float(p999), 1), "max_us": round(float(ns.max()) / 1e3, 1)}


def histogram(ns: np.ndarray) -> list[int]:
    us = np.clip(ns / 1e3, BIN_EDGES_US[0], BIN_EDGES_US[-1])
    counts: list[int] = np.histogram(us, bins=BIN_EDGES_US)[0].tolist()
    return counts


def windows(latency_ns: dict[str, np.ndarray], end_ns: dict[str, np.ndarray], t0_ns: int,
            events_ns: dict[str, list[int]], width: float = WINDOW_S) -> dict[str, Any]:
    """The run cut into windows of ``width`` seconds from ``t0_ns`` by completion time.

    Every operation lands in exactly one window (one finished a hair before ``t0_ns`` in the
    first, the last window reaches the last completion), so the window counts sum to the totals.
    Events (``{"kills": [...], "publishes": [...]}``, monotonic ns) become seconds from t0."""
    all_end = np.concatenate([end_ns[op] for op in OPS]) if any(end_ns[op].size for op in OPS) else np.zeros(0)
    span = max(0.0, (float(all_end.max()) - t0_ns) / 1e9) if all_end.size else 0.0
    count = max(1, int(np.floor(span / width)) + 1)
    index = {op: np.clip(((end_ns[op] - t0_ns) / 1e9 // width).astype(np.int64), 0, count - 1) for op in OPS}
    rows = []
    for i in range(count):
        per_op = {op: latency_ns[op][index[op] == i] for op in OPS}
        both = np.concatenate([per_op[op] for op in OPS])
        p = percentiles(both)
        # The last window ends at the last completion: a full width would understate its rate.
        seconds = width if i < count - 1 else max(span - i * width, 1e-3)
        rows.append({"start_s": round(i * width, 3), "seconds": round(seconds, 4), "ops": p["count"],
                     "ops_by_type": {op: int(per_op[op].size) for op in OPS},
                     "throughput_ops_s": round(p["count"] / seconds, 1),
                     "p50_us": p["p50_us"], "p99_us": p["p99_us"], "p999_us": p["p999_us"]})
    return {"width_s": width, "windows": rows,
            "events": {kind: [round((t - t0_ns) / 1e9, 4) for t in times] for kind, times in events_ns.items()}}


# --------------------------------------------------------------------- the table

def render_report(result: dict[str, Any]) -> Any:
    """The verdict as a rich Table (print it with a rich Console)."""
    from ..coordinator._rich import rich

    Table = rich("table").Table

    def flag(value: int, good: int = 0) -> str:
        return f"[green]{value}[/]" if value == good else f"[bold red]{value}[/]"

    verdict = "[bold green]PASS[/]" if result["ok"] else "[bold red]FAIL[/]"
    table = Table(title=f"shmpool stress {result['name']!r}: {verdict}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("setup", f"{result['clients']} clients in {result['client_processes']} processes, "
                           f"{result['workers']} workers, {result['elapsed_s']:.1f} s, crystallize every "
                           f"{result['crystallize_every_s']} s, kill workers: {result['kill_workers']}")
    table.add_row("throughput", f"{result['throughput_ops_s']:,.0f} ops/s ({result['total_ops']:,} ops)")
    for op, lat in result["latency_us"].items():
        text = ("-" if not lat["count"] else
                f"p50 {lat['p50_us']:,.0f} µs  p99 {lat['p99_us']:,.0f} µs  p99.9 {lat['p999_us']:,.0f} µs  "
                f"max {lat['max_us']:,.0f} µs  ({lat['count']:,} ops)")
        table.add_row(f"latency {op}", text)
    ts = result.get("timeseries")
    if ts and ts["windows"]:
        worst = max(ts["windows"], key=lambda w: w["p99_us"] or 0)
        table.add_row("worst 100 ms window", f"p99 {worst['p99_us'] or 0:,.0f} µs at {worst['start_s']:.1f} s "
                                             f"({worst['ops']:,} ops in it)")
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(result["errors"].items()))
    table.add_row("errors", f"[bold red]{errors}[/]" if errors else flag(0))
    table.add_row("torn reads", flag(result["torn_reads"]))
    table.add_row("wrong content", flag(result["wrong_content"]))
    table.add_row("lost jobs", flag(result["lost_jobs"]))
    table.add_row("generations published", str(result["generations_published"]))
    table.add_row("worker kills / deaths", f"{result['worker_kills']} / {result['worker_deaths']}")
    jobs = result.get("jobs") or {}
    table.add_row("jobs (coordinator)", ", ".join(f"{k} {jobs[k]:,}" for k in
                                                  ("submitted", "completed", "failed", "requeued") if k in jobs))
    table.add_row("leaked blocks", f"{flag(result['leaked_blocks'])}  ({result['live_allocations']} live "
                                   f"allocations, {result['dimensions']} dimensions, "
                                   f"{result['superseded_pending']} superseded still pinned)")
    table.add_row("left in /dev/shm", flag(len(result["leftover_objects"])))
    return table


# --------------------------------------------------------------------- the files

def write_outputs(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> tuple[list[Path], str | None]:
    """Write ``stress-<timestamp>.json`` and, with matplotlib, ``stress-<timestamp>.png``.

    Returns (paths written, a note on what was skipped or None).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"stress-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    try:
        import matplotlib
    except ImportError:
        return [json_path], "matplotlib is not installed: no figure (pip install 'shmpool[plot]')"
    matplotlib.use("Agg")
    png_path = stem.with_suffix(".png")
    _figure(result, png_path)
    return [json_path, png_path], None


def _figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(14, 5.5))
    grid = fig.add_gridspec(2, 2, width_ratios=(1, 1.6), height_ratios=(1.4, 1), hspace=0.08)
    hist = fig.add_subplot(grid[:, 0])
    edges = result["histogram"]["edges_us"]
    for op in OPS:
        if sum(result["histogram"][op]):
            hist.stairs(result["histogram"][op], edges, label=op)
    hist.set_xscale("log")
    hist.set_xlabel("latency (µs, log scale)")
    hist.set_ylabel("operations")
    hist.set_title("latency, whole run")
    hist.legend()

    ts = result["timeseries"]
    starts = np.array([w["start_s"] for w in ts["windows"]]) + ts["width_s"] / 2
    lat = fig.add_subplot(grid[0, 1])
    thr = fig.add_subplot(grid[1, 1], sharex=lat)
    for key, label in (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")):
        values = np.array([np.nan if w[key] is None else w[key] for w in ts["windows"]], dtype=float)
        lat.plot(starts, values, label=label, linewidth=1.2)
    lat.set_yscale("log")
    lat.set_ylabel("latency (µs)")
    lat.set_title(f"per {ts['width_s'] * 1000:.0f} ms window; red: worker killed, grey: generation published")
    lat.tick_params(labelbottom=False)
    thr.plot(starts, [w["throughput_ops_s"] for w in ts["windows"]], color="black", linewidth=1.2)
    thr.set_ylabel("ops/s")
    thr.set_xlabel("time since start (s)")
    for ax in (lat, thr):
        for t in ts["events"].get("publishes", []):
            ax.axvline(t, color="0.6", linestyle="--", linewidth=0.8)
        for t in ts["events"].get("kills", []):
            ax.axvline(t, color="tab:red", linewidth=1.2)
    lat.legend(loc="upper right")
    fig.suptitle(f"shmpool stress: {result['clients']} clients, {result['workers']} workers, "
                 f"{result['elapsed_s']:.0f} s, {result['worker_kills']} worker "
                 f"kill{'s' * (result['worker_kills'] != 1)}, {result['generations_published']} generations")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
