"""Prometheus metrics of a running coordinator: ``shmpool serve NAME --metrics-port 9464``.

A custom collector reads live values at each scrape (``Coordinator.stats()`` plus the job board's
latency histogram, which lives in shared memory and is filled by the workers), so nothing is
updated on any hot path and there is no second copy of the numbers to drift. Each coordinator
gets its own CollectorRegistry: nothing global, two coordinators in one process do not collide.
prometheus-client is an optional extra (``pip install 'shmpool[metrics]'``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Iterator

from loguru import logger

if TYPE_CHECKING:
    from .coordinator import Coordinator

__all__ = ["ShmpoolCollector", "serve_metrics", "CAPACITY_STATES"]

CAPACITY_STATES = {"ok": 0, "warn": 1, "evict": 2, "refuse": 3}


class ShmpoolCollector:
    """Everything ``Coordinator.stats()`` knows, as Prometheus metric families."""

    def __init__(self, coord: "Coordinator") -> None:
        self._coord = coord

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        coord = self._coord
        try:
            s = coord.stats()
        except RuntimeError:  # stopped between scrapes
            return
        name = coord.name

        def gauge(metric: str, doc: str, value, labels: dict | None = None):
            fam = GaugeMetricFamily(metric, doc, labels=["instance_name", *(labels or {})])
            fam.add_metric([name, *(labels or {}).values()], value)
            return fam

        def counter(metric: str, doc: str, value):
            fam = CounterMetricFamily(metric, doc, labels=["instance_name"])
            fam.add_metric([name], value)
            return fam

        pools = {k: GaugeMetricFamily(f"shmpool_pool_{k}", doc, labels=["instance_name", "pool", "block_size"])
                 for k, doc in (("utilization", "used blocks / blocks of the pool"),
                                ("fragmentation", "1 - largest free run / free blocks"),
                                ("blocks_total", "blocks in the pool"),
                                ("blocks_used", "blocks in live allocations"))}
        failures = CounterMetricFamily("shmpool_pool_allocation_failures_total",
                                       "failed allocations whose best pool was this one",
                                       labels=["instance_name", "pool", "block_size"])
        for p in s["pools"]:
            labels = [name, str(p["index"]), str(p["block_size"])]
            pools["utilization"].add_metric(labels, p["utilization"])
            pools["fragmentation"].add_metric(labels, p["fragmentation"])
            pools["blocks_total"].add_metric(labels, p["blocks_total"])
            pools["blocks_used"].add_metric(labels, p["blocks_used"])
            failures.add_metric(labels, p["failures"])
        yield from pools.values()
        yield failures

        cap = s.get("capacity", {})
        yield gauge("shmpool_memory_used_bytes", "bytes in whole blocks of live allocations", s["used_bytes"])
        yield gauge("shmpool_memory_limit_bytes", "the memory limit", s["memory_limit"])
        yield gauge("shmpool_memory_peak_bytes", "highest usage seen", s["peak_bytes"])
        yield gauge("shmpool_memory_utilization", "used / limit", s["utilization"])
        yield gauge("shmpool_capacity_state", "0 ok, 1 >= warn (75%), 2 >= evict (85%), 3 >= refuse (95%)",
                    CAPACITY_STATES.get(cap.get("state", "ok"), 0))
        yield counter("shmpool_allocation_failures_total", "failed allocations (no room or limit)", s["failures"])
        yield counter("shmpool_limit_refusals_total", "allocations refused by the 95% rule", s["limit_refusals"])
        yield counter("shmpool_allocations_total", "successful allocations", s["allocations"])
        yield counter("shmpool_reclaimed_total", "allocations reclaimed from dead processes", s["reclaimed"])
        yield counter("shmpool_evictions_total", "dimensions evicted", cap.get("evictions", 0))
        yield counter("shmpool_reloads_total", "evicted dimensions reloaded on access", cap.get("reloads", 0))
        yield counter("shmpool_compressions_total", "dimensions republished compressed", cap.get("compressions", 0))
        yield counter("shmpool_rehydrations_total", "compressed dimensions republished uncompressed",
                      cap.get("rehydrations", 0))
        yield counter("shmpool_pool_growths_total", "growth segments added to full pools", cap.get("pool_growths", 0))
        yield gauge("shmpool_evicted_dimensions", "dimensions currently evicted", len(cap.get("evicted_dimensions", [])))
        yield gauge("shmpool_readers_attached", "attached reader processes", s["readers_attached"])
        yield gauge("shmpool_readers_peak", "most reader processes attached at once", s["readers_peak"])
        yield gauge("shmpool_dimensions", "published dimensions with a region", s["dimensions"])
        generations = GaugeMetricFamily("shmpool_dimension_generation", "published generation per dimension",
                                        labels=["instance_name", "dimension"])
        for dim, gen in s["generations"].items():
            generations.add_metric([name, str(dim)], gen)
        yield generations

        jobs = s.get("jobs")
        if jobs is None:
            return
        for key in ("submitted", "completed", "failed", "requeued", "cancelled"):
            yield counter(f"shmpool_jobs_{key}_total", f"jobs {key}", jobs[key])
        yield gauge("shmpool_jobs_queued", "requests waiting for a worker", jobs["queued"])
        yield gauge("shmpool_jobs_running", "requests a worker is running", jobs["running"])
        yield gauge("shmpool_job_slots_free", "free request slots", jobs["free"])
        yield gauge("shmpool_clients", "connected clients", jobs["clients"])
        workers = s.get("workers", {})
        yield gauge("shmpool_workers", "worker processes", len(workers.get("pids", [])))
        yield counter("shmpool_worker_deaths_total", "worker processes that died", jobs["worker_deaths"])
        hist = coord.job_latency_histogram()
        if hist is not None:
            fam = HistogramMetricFamily("shmpool_job_latency_seconds",
                                        "job latency: submitted -> response stored by the worker",
                                        labels=["instance_name"])
            buckets = [("+Inf" if b == float("inf") else repr(b), c) for b, c in hist["buckets"]]
            fam.add_metric([name], buckets, hist["sum_seconds"])
            yield fam


def serve_metrics(coord: "Coordinator", port: int, addr: str = "127.0.0.1"):
    """Serve /metrics for ``coord`` on ``addr:port`` (port 0 picks a free one) in a daemon thread.

    Returns the WSGI server; ``server.server_port`` is the bound port, ``server.shutdown()`` stops
    it. Raises ImportError with the install hint if prometheus-client is missing."""
    try:
        from prometheus_client import CollectorRegistry, make_wsgi_app
    except ImportError as exc:
        raise ImportError("metrics need prometheus-client: pip install 'shmpool[metrics]'") from exc
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class _Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:  # scrapes every few seconds are not news
            pass

    class _ThreadingServer(WSGIServer):
        daemon_threads = True

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShmpoolCollector(coord))
    server = make_server(addr, port, make_wsgi_app(registry), server_class=_ThreadingServer,
                         handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name=f"shmpool-{coord.name}-metrics", daemon=True)
    thread.start()
    logger.info("metrics of {!r} at http://{}:{}/metrics", coord.name, addr, server.server_port)
    return server
