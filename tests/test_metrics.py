"""Prometheus metrics, scraped over real HTTP from a real coordinator and from `shmpool serve`."""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import shmpool
from coordinator import Coordinator
from coordinator.metrics import serve_metrics
from shmpool import PoolSpec
from shmpool.names import list_objects
from shmpool.sample import build_sample

KiB, MiB = 1024, 1024 * 1024


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample")
    build_sample(path, layers_per_dimension=20)
    return path


def scrape(port: int) -> dict:
    """{(metric sample name, frozenset(labels without instance_name)): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset((k, v) for k, v in sample.labels.items() if k != "instance_name")
            out[(sample.name, labels)] = sample.value
    return out


def test_metrics_follow_jobs_memory_and_capacity_state(instance_name, sample_dir):
    pools = (PoolSpec(64 * KiB, 160),)  # 10 MiB; the sample with 20 layers a dimension is ~3.3 MiB
    with Coordinator(instance_name, data_dir=sample_dir, workers=1, pools=pools, memory_limit=8 * MiB) as coord:
        server = serve_metrics(coord, 0)
        try:
            with shmpool.connect(instance_name) as client:
                for i in range(25):
                    assert client.lookup(1 + i % 14, 1 + i % 20).verify()
            m = scrape(server.server_port)
            assert m[("shmpool_job_latency_seconds_count", frozenset())] == 25
            assert m[("shmpool_job_latency_seconds_bucket", frozenset({("le", "+Inf")}))] == 25
            assert m[("shmpool_jobs_completed_total", frozenset())] == 25
            assert m[("shmpool_memory_used_bytes", frozenset())] == coord.stats()["used_bytes"]
            assert m[("shmpool_memory_limit_bytes", frozenset())] == 8 * MiB
            assert m[("shmpool_capacity_state", frozenset())] == 0
            assert m[("shmpool_workers", frozenset())] == 1
            assert m[("shmpool_dimension_generation", frozenset({("dimension", "3")}))] == 1
            assert m[("shmpool_pool_blocks_total", frozenset({("pool", "0"), ("block_size", "65536")}))] == 160
            # Fill to past 75% with real allocations from another process's view of the table.
            with shmpool.attach(instance_name) as reader:
                table = reader._inst.table
                held = [table.allocate(64 * KiB) for _ in range(int((0.78 * 8 * MiB - coord.stats()["used_bytes"]) // (64 * KiB)) + 1)]
                m = scrape(server.server_port)
                assert m[("shmpool_capacity_state", frozenset())] == 1
                assert m[("shmpool_memory_utilization", frozenset())] >= 0.75
                for h in held:
                    table.free(h)
        finally:
            server.shutdown()
            server.server_close()


def test_serve_exposes_metrics_and_stops_cleanly_on_sigint(instance_name, sample_dir):
    proc = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "serve", instance_name, "--workers", "1",
                             "--data-dir", str(sample_dir), "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "serving" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            if select.select([proc.stdout], [], [], 0.1)[0]:
                line = proc.stdout.readline()
        port = int(re.search(r":(\d+)/metrics", line).group(1))
        m = scrape(port)
        assert m[("shmpool_dimensions", frozenset())] == 14
        assert m[("shmpool_workers", frozenset())] == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert list_objects(instance_name) == ([], [])
