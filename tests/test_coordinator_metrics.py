"""Prometheus metrics, scraped over real HTTP from a real coordinator and from `shmpool serve`."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.coordinator.capacity import CapacityPolicy
from shmpool.coordinator.metrics import serve_metrics
from shmpool import PoolSpec
from shmpool.jobs.jobs_layout import LATENCY_BOUNDS_NS
from shmpool.substrate.names import list_objects
from shmpool.data.sample import build_sample

KiB, MiB = 1024, 1024 * 1024
NONE = frozenset()


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample")
    build_sample(path, layers_per_dimension=20)  # 14 dimensions, ~3.3 MiB in 64 KiB blocks
    return path


def scrape(port: int) -> dict:
    """{(sample name, frozenset(labels without instance_name)): value}, from a real HTTP GET."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset((k, v) for k, v in sample.labels.items() if k != "instance_name")
            out[(sample.name, labels)] = sample.value
    return out


def capacity_state(m: dict) -> str:
    """The one state label whose series is 1; fails unless exactly one is."""
    on = [dict(k[1])["state"] for k, v in m.items() if k[0] == "shmpool_capacity_state" and v == 1]
    off = [k for k, v in m.items() if k[0] == "shmpool_capacity_state" and v == 0]
    assert len(on) == 1 and len(off) == 3, (on, off)
    return on[0]


def fill_to(table, used, fraction: float, limit: int, step: int = 64 * KiB) -> list:
    """Allocate ``step`` bytes at a time until ``used()`` reaches ``fraction`` of ``limit``."""
    held = []
    while used() < fraction * limit:
        held.append(table.allocate(step))
    return held


def test_metrics_follow_jobs_memory_and_capacity_state(instance_name, sample_dir):
    limit = 10 * MiB  # 160 blocks: warn at 120, evict at 136, refuse past exactly 152
    pools = (PoolSpec(64 * KiB, 160),)
    with Coordinator(instance_name, data_dir=sample_dir, workers=1, pools=pools, memory_limit=limit,
                     capacity=CapacityPolicy(evict=False)) as coord:
        with serve_metrics(coord, 0) as endpoint:
            with shmpool.connect(instance_name) as client:
                for i in range(25):
                    assert client.lookup(1 + i % 14, 1 + i % 20).verify()
            m = scrape(endpoint.port)
            # The histogram is the workers' shared one: every job finished, once.
            assert m[("shmpool_job_latency_seconds_count", NONE)] == 25
            assert m[("shmpool_jobs_completed_total", NONE)] == 25
            assert m[("shmpool_jobs_submitted_total", NONE)] == 25
            buckets = sorted((float(dict(k[1])["le"]), v) for k, v in m.items()
                             if k[0] == "shmpool_job_latency_seconds_bucket")
            assert [b for b, _ in buckets] == [ns / 1e9 for ns in LATENCY_BOUNDS_NS] + [float("inf")]
            assert [c for _, c in buckets] == sorted(c for _, c in buckets)  # cumulative
            assert buckets[-1][1] == 25
            assert 0 < m[("shmpool_job_latency_seconds_sum", NONE)] < 25 * 10
            st = coord.stats()
            assert m[("shmpool_memory_used_bytes", NONE)] == st["used_bytes"] > 0
            assert m[("shmpool_memory_limit_bytes", NONE)] == limit
            assert capacity_state(m) == "ok"
            assert m[("shmpool_workers", NONE)] == 1
            assert m[("shmpool_dimensions", NONE)] == 14
            assert m[("shmpool_dimension_generation", frozenset({("dimension", "3")}))] == 1
            pool0 = frozenset({("pool", "0"), ("block_size", str(64 * KiB))})
            assert m[("shmpool_pool_blocks", pool0)] == 160
            assert m[("shmpool_pool_blocks_used", pool0)] == st["used_bytes"] // (64 * KiB)

            # Real allocations through another view of the allocation table move the state.
            with shmpool.attach(instance_name) as reader:
                table = reader.instance.table

                def used() -> int:
                    return reader.stats()["used_bytes"]

                held = []
                for fraction, state in ((0.75, "warn"), (0.85, "evict"), (0.95, "refuse")):
                    held += fill_to(table, used, fraction, limit)
                    m = scrape(endpoint.port)
                    assert capacity_state(m) == state, (fraction, m)
                    assert m[("shmpool_memory_utilization_ratio", NONE)] >= fraction
                assert m[("shmpool_memory_used_bytes", NONE)] == 152 * 64 * KiB
                assert m[("shmpool_limit_refusals_total", NONE)] == 0
                with pytest.raises(shmpool.errors.LimitExceeded):
                    table.allocate(1)
                m = scrape(endpoint.port)
                assert m[("shmpool_limit_refusals_total", NONE)] == 1
                assert m[("shmpool_allocation_failures_total", NONE)] == 1
                for h in held:
                    table.free(h)
            m = scrape(endpoint.port)
            assert capacity_state(m) == "ok"
            assert m[("shmpool_memory_used_bytes", NONE)] == coord.stats()["used_bytes"]


def test_evictions_show_in_metrics(instance_name, sample_dir):
    limit = 8 * MiB
    # Copied into the pools: mapped regions are not in shared memory, and never evicted.
    with Coordinator(instance_name, data_dir=sample_dir, workers=0, pools=(PoolSpec(64 * KiB, 160),),
                     memory_limit=limit, mapped_regions=False) as coord:
        with serve_metrics(coord, 0) as endpoint:
            assert scrape(endpoint.port)[("shmpool_evictions_total", NONE)] == 0
            with shmpool.attach(instance_name) as reader:
                held = fill_to(reader.instance.table, lambda: reader.stats()["used_bytes"], 0.86, limit)
                deadline = time.monotonic() + 10
                while True:  # the reaper evicts least recently used dimensions within ~20 ms
                    m = scrape(endpoint.port)
                    if m[("shmpool_evictions_total", NONE)] >= 1 and capacity_state(m) in ("ok", "warn"):
                        break
                    assert time.monotonic() < deadline, m
                    time.sleep(0.05)
                assert m[("shmpool_evicted_dimensions", NONE)] == m[("shmpool_evictions_total", NONE)]
                assert m[("shmpool_dimensions", NONE)] == 14 - m[("shmpool_evicted_dimensions", NONE)]
                for h in held:
                    reader.instance.table.free(h)


def test_optional_stats_keys_and_closed_endpoint(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=0) as coord:
        endpoint = serve_metrics(coord, 0)
        server, thread = endpoint  # the documented shape
        assert thread.is_alive() and server.server_port == endpoint.port
        m = scrape(endpoint.port)
        assert not any(k[0].startswith(("shmpool_jobs_", "shmpool_job_latency")) for k in m)  # no board
        assert not any(k[0] == "shmpool_lookups_total" for k in m)

        # Keys another version may or may not have: exported when present, zeros when absent.
        real_stats = coord.stats
        coord.stats = lambda: {**{k: v for k, v in real_stats().items() if k != "capacity"}, "reader_lookups": 7}
        m = scrape(endpoint.port)
        assert m[("shmpool_lookups_total", NONE)] == 7
        assert m[("shmpool_evictions_total", NONE)] == 0
        assert m[("shmpool_pool_growths_total", NONE)] == 0
        assert capacity_state(m) == "ok"  # from the thresholds, without "capacity"
        del coord.stats

        endpoint.close()
        endpoint.close()  # idempotent
        assert not thread.is_alive()
        with pytest.raises(urllib.error.URLError):
            scrape(endpoint.port)


def _serving_line(proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited with {proc.returncode}: {proc.stderr.read()}"
        if select.select([proc.stdout], [], [], 0.1)[0]:
            line = proc.stdout.readline()
            if "serving" in line:
                return line
    raise AssertionError("serve did not print its ready line within 60 s")


def test_serve_exposes_metrics_colours_stats_and_stops_cleanly_on_sigint(instance_name, sample_dir):
    limit = 16 * MiB
    proc = subprocess.Popen([sys.executable, "-m", "shmpool.coordinator.cli", "serve", instance_name, "--workers", "1",
                             "--data-dir", str(sample_dir), "--memory-limit", "16MiB", "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/metrics", _serving_line(proc)).group(1))
        m = scrape(port)
        assert m[("shmpool_dimensions", NONE)] == 14
        assert m[("shmpool_workers", NONE)] == 1
        assert capacity_state(m) == "ok"
        assert m[("shmpool_job_latency_seconds_count", NONE)] == 0

        with shmpool.connect(instance_name) as client:
            for i in range(5):
                assert client.lookup(1 + i, 1).verify()
        with shmpool.attach(instance_name) as reader:
            # Between warn (75%) and evict (85%), so the coordinator leaves it alone.
            held = fill_to(reader.instance.table, lambda: reader.stats()["used_bytes"], 0.78, limit)
            m = scrape(port)
            assert capacity_state(m) == "warn"
            assert m[("shmpool_job_latency_seconds_count", NONE)] == 5
            stats = subprocess.run([sys.executable, "-m", "shmpool.coordinator.cli", "stats", instance_name],
                                   capture_output=True, text=True, timeout=60,
                                   env={**os.environ, "FORCE_COLOR": "1", "COLUMNS": "200"})
            for h in held:
                reader.instance.table.free(h)
        assert stats.returncode == 0, stats.stderr
        assert "\x1b[33m" in stats.stdout  # rich's yellow: the warning state
        assert "warning: above the 75% warning threshold" in re.sub(r"\x1b\[[0-9;]*m", "", stats.stdout)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert list_objects(instance_name) == ([], [])
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_serve_with_a_taken_metrics_port_exits_1_and_leaves_nothing(instance_name, sample_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "shmpool.coordinator.cli", "serve", instance_name, "--workers", "0",
                                 "--data-dir", str(sample_dir), "--metrics-port", str(port)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "serving" not in result.stdout
    assert f"metrics endpoint 127.0.0.1:{port}" in result.stderr
    assert list_objects(instance_name) == ([], [])


# Prometheus naming rules (https://prometheus.io/docs/practices/naming/) as this exporter applies them.
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_UNIT_WORDS = ("bytes", "seconds", "ratio", "total", "info")
_RATIO_WORDS = ("utilization", "fragmentation", "fraction", "percent")


def naming_faults(text: str) -> list[str]:
    """Every way an exposition breaks the naming rules, as readable lines (empty when clean)."""
    faults = []
    seen = set()
    for family in text_string_to_metric_families(text):
        name, kind = family.name, family.type
        if name in seen:
            faults.append(f"{name}: exposed twice")
        seen.add(name)
        if not _NAME.match(name):
            faults.append(f"{name}: not a valid metric name")
        if not name.startswith(("shmpool_", "process_")):
            faults.append(f"{name}: not under the shmpool_ (or process collector's process_) prefix")
        if not family.documentation:
            faults.append(f"{name}: no HELP text")
        if kind == "unknown":
            faults.append(f"{name}: no TYPE")
        sample_names = {s.name for s in family.samples}
        if kind == "counter" and not all(n.endswith(("_total", "_created")) for n in sample_names):
            faults.append(f"{name}: a counter whose samples do not end in _total: {sorted(sample_names)}")
        if kind != "counter" and any(n.endswith("_total") for n in sample_names):
            faults.append(f"{name}: a {kind} ending in _total (only counters may)")
        if any(w in name for w in _RATIO_WORDS) and not name.endswith("_ratio"):
            faults.append(f"{name}: a ratio whose name does not end in _ratio")
        if kind == "gauge":
            for s in family.samples:
                if 0 < s.value < 1 and not name.endswith("_ratio") and not name.endswith(("_seconds", "_bytes")):
                    faults.append(f"{name}: fractional value {s.value} in a gauge that is not a _ratio")
        for s in family.samples:
            if "_state" in name and "state" not in s.labels:
                faults.append(f"{name}: a state as a number instead of a state label")
    return faults


def test_naming_lint_catches_what_it_is_there_to_catch():
    bad = ("# HELP shmpool_pool_blocks_total blocks\n# TYPE shmpool_pool_blocks_total gauge\n"
           "shmpool_pool_blocks_total 3\n"
           "# HELP shmpool_memory_utilization used\n# TYPE shmpool_memory_utilization gauge\n"
           "shmpool_memory_utilization 0.5\n"
           "# HELP shmpool_capacity_state state\n# TYPE shmpool_capacity_state gauge\nshmpool_capacity_state 2\n")
    faults = naming_faults(bad)
    assert any("shmpool_pool_blocks_total: a gauge ending in _total" in f for f in faults), faults
    assert any("shmpool_memory_utilization: a ratio" in f for f in faults), faults
    assert any("shmpool_capacity_state: a state as a number" in f for f in faults), faults


def test_every_exposed_name_follows_the_prometheus_naming_rules(instance_name, sample_dir):
    with Coordinator(instance_name, data_dir=sample_dir, workers=1) as coord:
        with serve_metrics(coord, 0) as endpoint:
            with shmpool.connect(instance_name) as client:
                assert client.lookup(1, 1).verify()  # a latency sample, so the histogram has data
            text = urllib.request.urlopen(endpoint.url, timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert naming_faults(text) == []
    info = families["shmpool_build_info"]  # the text format carries an info family as a gauge of 1
    assert info.samples[0].labels["version"] == shmpool.__version__
    assert info.samples[0].value == 1
    assert "process_resident_memory_bytes" in families and "process_cpu_seconds" in families
    assert families["process_resident_memory_bytes"].samples[0].value > 0
