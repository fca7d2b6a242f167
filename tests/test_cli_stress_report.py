"""``shmpool stress --out``: the JSON's 100 ms windows add up to its totals, and the figure is drawn."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shmpool.tools.stress_report import OPS, windows


@given(st.lists(st.tuples(st.sampled_from(OPS), st.integers(-10**7, 3 * 10**9), st.integers(1, 10**9)),
                max_size=300),
       st.lists(st.integers(0, 3 * 10**9), max_size=5))
def test_windows_partition_every_operation_whatever_the_times(ops, kills):
    t0 = 10**12
    lat = {op: np.array([l for o, _, l in ops if o == op], dtype=np.int64) for op in OPS}
    end = {op: np.array([t0 + e for o, e, _ in ops if o == op], dtype=np.int64) for op in OPS}
    ts = windows(lat, end, t0, {"kills": [t0 + k for k in kills], "publishes": []})
    rows = ts["windows"]
    assert sum(w["ops"] for w in rows) == len(ops)
    for op in OPS:
        assert sum(w["ops_by_type"][op] for w in rows) == lat[op].size
    assert [w["start_s"] for w in rows] == [round(i * 0.1, 3) for i in range(len(rows))]
    assert ts["events"]["kills"] == [round(k / 1e9, 4) for k in kills]
    for w in rows:
        assert (w["p50_us"] is None) == (w["ops"] == 0)
        if w["ops"]:
            assert w["p50_us"] <= w["p99_us"] <= w["p999_us"]


def test_stress_out_writes_windows_that_add_up_and_a_figure(stress_run):
    _, report, data = stress_run  # tests/_stress_run.py: 2 clients, 2 s, kills, --out
    ts = data["timeseries"]
    rows = ts["windows"]
    assert ts["width_s"] == 0.1 and len(rows) >= 20  # 2 s of run in 100 ms windows
    assert sum(w["ops"] for w in rows) == data["total_ops"] > 0
    for op in OPS:
        assert sum(w["ops_by_type"][op] for w in rows) == data["latency_us"][op]["count"]
    for w in rows[:-1]:
        assert w["seconds"] == 0.1 and w["throughput_ops_s"] == pytest.approx(w["ops"] / 0.1, abs=0.1)
    # Every fault is on the time axis: one mark per kill and per publication after the first.
    assert len(ts["events"]["kills"]) == data["worker_kills"] >= 1
    assert len(ts["events"]["publishes"]) == data["generations_published"] - 1 >= 1
    assert all(0 < t < data["wall_s"] for t in ts["events"]["kills"] + ts["events"]["publishes"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.skip("matplotlib (the plot extra) is not installed: no figure to check")
    png = report.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # IHDR: histogram and time series side by side
    assert width > 1.8 * height > 0, (width, height)
