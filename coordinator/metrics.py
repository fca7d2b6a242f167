"""Prometheus metrics of a running coordinator: ``shmpool serve NAME --metrics-port 9464``.

A custom collector reads live values at each scrape (``Coordinator.stats()`` plus the job board's
latency histogram, which lives in shared memory and is filled by the workers), so nothing is
updated on any hot path and there is no second copy of the numbers to drift. Each coordinator
gets its own CollectorRegistry: nothing global, two coordinators in one process do not collide.
prometheus-client is an optional extra (``pip install 'shmpool[metrics]'``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from shmpool.substrate._log import logger

import shmpool
from shmpool.substrate.limits import CapacityState

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

    from .coordinator import Coordinator

__all__ = ["ShmpoolCollector", "MetricsServer", "serve_metrics", "CAPACITY_STATES"]

# The label values of shmpool_capacity_state, in order; exactly one has the value 1.
CAPACITY_STATES = tuple(s.label for s in CapacityState)


class ShmpoolCollector:
    """Everything ``Coordinator.stats()`` knows, as Prometheus metric families.

    ``close()`` waits for a scrape in progress and makes later ones empty, so the coordinator can
    stop (and unmap what ``stats()`` reads) right after it."""

    def __init__(self, coord: "Coordinator") -> None:
        self._coord = coord
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if self._closed:
                return []
            try:
                s = self._coord.stats()
                hist = self._coord.job_latency_histogram() if s.get("jobs") is not None else None
            except RuntimeError:  # the coordinator is not running (any more)
                return []
            # Built into a list under the lock: a generator would read after close() returned.
            return list(self._families(s, hist))

    def _families(self, s: dict[str, Any], hist: dict[str, Any] | None) -> Iterator[Metric]:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily)
        from prometheus_client.utils import floatToGoString

        name = self._coord.name

        def gauge(metric: str, doc: str, value: float) -> Metric:
            fam = GaugeMetricFamily(metric, doc, labels=["instance_name"])
            fam.add_metric([name], value)
            return fam

        def counter(metric: str, doc: str, value: float) -> Metric:
            fam = CounterMetricFamily(metric, doc, labels=["instance_name"])
            fam.add_metric([name], value)
            return fam

        build = InfoMetricFamily("shmpool_build", "the shmpool version serving this instance",
                                 labels=["instance_name"])
        build.add_metric([name], {"version": shmpool.__version__})
        yield build
        # Blocks of a pool are a gauge, not a counter: a _total suffix would promise a counter.
        pools = {k: GaugeMetricFamily(f"shmpool_pool_{k}", doc, labels=["instance_name", "pool", "block_size"])
                 for k, doc in (("utilization_ratio", "used blocks / blocks of the pool"),
                                ("fragmentation_ratio", "1 - largest free run / free blocks"),
                                ("blocks", "blocks in the pool"),
                                ("blocks_used", "blocks in live allocations"))}
        failures = CounterMetricFamily("shmpool_pool_allocation_failures_total",
                                       "failed allocations whose best pool was this one",
                                       labels=["instance_name", "pool", "block_size"])
        for p in s["pools"]:
            labels = [name, str(p["index"]), str(p["block_size"])]
            pools["utilization_ratio"].add_metric(labels, p["utilization"])
            pools["fragmentation_ratio"].add_metric(labels, p["fragmentation"])
            pools["blocks"].add_metric(labels, p["blocks_total"])
            pools["blocks_used"].add_metric(labels, p["blocks_used"])
            failures.add_metric(labels, p["failures"])
        yield from pools.values()
        yield failures

        # Capacity keys are read with defaults: a coordinator without a capacity manager (or an
        # older one) still exports every series, as zeros.
        cap = s.get("capacity", {})
        state = cap.get("state") or self._coord.thresholds.state(s["used_bytes"], s["memory_limit"]).label
        yield gauge("shmpool_memory_used_bytes", "bytes in whole blocks of live allocations", s["used_bytes"])
        yield gauge("shmpool_memory_limit_bytes", "the memory limit", s["memory_limit"])
        yield gauge("shmpool_memory_peak_bytes", "highest usage seen", s["peak_bytes"])
        yield gauge("shmpool_memory_utilization_ratio", "used / limit", s["utilization"])
        # An enum as one series per state, the current one 1 (the Prometheus convention for
        # states): alerts read shmpool_capacity_state{state="evict"} == 1, not a magic number.
        states = GaugeMetricFamily("shmpool_capacity_state",
                                   "1 for the highest threshold usage reached: ok, warn (75%), evict (85%), "
                                   "refuse (95%)", labels=["instance_name", "state"])
        for label in CAPACITY_STATES:
            states.add_metric([name, label], 1 if label == state else 0)
        yield states
        yield counter("shmpool_allocation_failures_total", "failed allocations (no room or limit)", s["failures"])
        yield counter("shmpool_limit_refusals_total", "allocations refused by the 95% rule", s["limit_refusals"])
        yield counter("shmpool_allocations_total", "successful allocations", s["allocations"])
        yield counter("shmpool_shm_full_refusals_total", "allocations refused because /dev/shm was full",
                      s.get("shm_full_refusals", 0))
        shm = s.get("shm") or {}
        yield gauge("shmpool_shm_backed_bytes", "pool bytes whose pages are reserved in /dev/shm",
                    s.get("backed_bytes", 0))
        yield gauge("shmpool_shm_free_bytes", "free bytes of the shared-memory filesystem", shm.get("free", 0))
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
        if "reader_lookups" in s:  # only when readers count their lookups
            yield counter("shmpool_lookups_total", "layer lookups by attached readers", s["reader_lookups"])
        generations = GaugeMetricFamily("shmpool_dimension_generation", "published generation per dimension",
                                        labels=["instance_name", "dimension"])
        for dim, gen in s["generations"].items():
            generations.add_metric([name, str(dim)], gen)
        yield generations

        jobs = s.get("jobs")
        if jobs is None:  # workers=0: no job board
            return
        for key in ("submitted", "completed", "failed", "requeued", "cancelled"):
            yield counter(f"shmpool_jobs_{key}_total", f"jobs {key}", jobs[key])
        yield gauge("shmpool_jobs_queued", "requests waiting for a worker", jobs["queued"])
        yield gauge("shmpool_jobs_running", "requests a worker is running", jobs["running"])
        yield gauge("shmpool_job_slots_free", "free request slots", jobs["free"])
        yield gauge("shmpool_clients", "connected clients", jobs["clients"])
        yield gauge("shmpool_workers", "worker processes", len(s.get("workers", {}).get("pids", [])))
        yield counter("shmpool_worker_deaths_total", "worker processes that died", jobs["worker_deaths"])
        if hist is not None:
            fam = HistogramMetricFamily("shmpool_job_latency_seconds",
                                        "job latency: submitted -> response stored by the worker",
                                        labels=["instance_name"])
            # _count is the +Inf bucket, so count and buckets always agree within a scrape.
            buckets = [(floatToGoString(b), c) for b, c in hist["buckets"]]  # type: ignore[no-untyped-call]  # unannotated upstream
            fam.add_metric([name], buckets, hist["sum_seconds"])
            yield fam


class MetricsServer:
    """The /metrics endpoint of one coordinator, the owner of its HTTP server and thread.

    Unpacks as ``server, thread = serve_metrics(...)``. ``close()`` (idempotent; also the context
    manager's exit) stops the server, joins its thread and waits for a scrape in progress. Close it
    before stopping the coordinator."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, collector: ShmpoolCollector) -> None:
        self.server = server
        self.thread = thread
        self._collector = collector

    def __iter__(self) -> Iterator[Any]:
        return iter((self.server, self.thread))

    def __repr__(self) -> str:
        return f"MetricsServer({self.url!r})"

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def url(self) -> str:
        host = str(self.server.server_address[0])  # an IP address string (AF_INET or AF_INET6)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    def close(self, timeout: float = 5.0) -> None:
        self.server.shutdown()  # returns at once if serve_forever already ended
        self.server.server_close()
        self.thread.join(timeout)
        # Request threads are daemons the server does not join: wait out a scrape still reading.
        self._collector.close()

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(coord: "Coordinator", port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve /metrics for ``coord`` on ``addr:port`` (port 0 picks a free one) in a daemon thread.

    Returns ``(server, thread)`` as a MetricsServer: ``.port`` is the bound port, ``.close()``
    stops it. Raises ImportError with the install hint if prometheus-client is missing, OSError
    if the port is taken."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError as exc:
        raise ImportError("metrics need prometheus-client: pip install 'shmpool[metrics]'") from exc

    from prometheus_client import ProcessCollector

    collector = ShmpoolCollector(coord)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)  # process_* of the coordinator: CPU, RSS, open fds
    server, thread = start_http_server(port, addr, registry=registry)
    thread.name = f"shmpool-{coord.name}-metrics"
    endpoint = MetricsServer(server, thread, collector)
    logger.info("metrics of {!r} at {}", coord.name, endpoint.url)
    return endpoint
