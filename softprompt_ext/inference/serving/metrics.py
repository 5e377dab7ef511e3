"""Prometheus metrics of `softprompt serve` (`GET /metrics`), in registries of their own per server.

Two halves, so that each lives in the process that observes it (the engine may run in a process of its own,
`engine_process.py`): `EngineMetrics` (the scheduler, model calls and adapter store) and `RequestMetrics`
(the HTTP side: responses and their latency). `GET /metrics` answers both texts, one after the other.

* `softprompt_queue_depth` -- rows waiting for a batch (gauge).
* `softprompt_running_rows` -- rows in the running batch (gauge; continuous batching).
* `softprompt_batch_size` -- rows per model call (histogram, label `kind`: generate | prefill | classify;
  under continuous batching a "generate" call is one decoding step of the running batch and a "prefill" call
  admits new rows).
* `softprompt_batch_adapters` -- distinct adapters per model call (histogram).
* `softprompt_batch_seconds` -- wall time of one model call (histogram).
* `softprompt_request_seconds` -- request latency, arrival to response (histogram, label `endpoint`).
* `softprompt_requests_total` -- responses by endpoint and HTTP status (counter).
* `softprompt_adapters_loaded` / `softprompt_adapters_registered` / `softprompt_adapter_bytes_loaded` --
  resident prompts, known prompts, bytes of resident prompt weights (gauges).
* `softprompt_adapter_evictions_total` / `softprompt_adapter_reloads_total` -- LRU evictions and reloads.
* `softprompt_prefix_cache_entries` / `softprompt_prefix_cache_bytes` / `softprompt_prefix_cache_hits_total` /
  `softprompt_prefix_cache_misses_total` -- decoder-only bases: adapters whose prompt keys/values are cached,
  their bytes, and how often a new row reused them (0 for seq2seq bases and without continuous batching).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class EngineMetrics:
    """The model side's metrics; `scheduler`, `registry`, `prefix_cache` and `running` are read at scrape time."""

    def __init__(self, scheduler, registry, prefix_cache=None, running=None):
        self.registry = CollectorRegistry()
        self.batch_size = Histogram("softprompt_batch_size", "Rows per model call", ["kind"], buckets=_SIZES,
                                    registry=self.registry)
        self.batch_adapters = Histogram("softprompt_batch_adapters", "Distinct adapters per model call", ["kind"],
                                        buckets=_SIZES, registry=self.registry)
        self.batch_seconds = Histogram("softprompt_batch_seconds", "Wall time of one model call", ["kind"],
                                       buckets=_LATENCY, registry=self.registry)
        depth = Gauge("softprompt_queue_depth", "Rows waiting for a batch", registry=self.registry)
        depth.set_function(lambda: scheduler.depth)
        rows = Gauge("softprompt_running_rows", "Rows in the running batch", registry=self.registry)
        rows.set_function(lambda: len(running) if running is not None else 0)
        self.registry.register(_AdapterCollector(registry))
        self.registry.register(_PrefixCacheCollector(prefix_cache))

    def observe_batch(self, kind: str, jobs, seconds: float) -> None:
        self.batch_size.labels(kind).observe(len(jobs))
        self.batch_adapters.labels(kind).observe(len({job.adapter for job in jobs}))
        self.batch_seconds.labels(kind).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """The HTTP side's metrics: every response's endpoint, status and latency."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram("softprompt_request_seconds", "Request latency", ["endpoint"],
                                         buckets=_LATENCY, registry=self.registry)
        self.requests = Counter("softprompt_requests", "Responses by endpoint and status", ["endpoint", "status"],
                                registry=self.registry)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.request_seconds.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def stable_copy(mapping) -> dict:
    """`dict(mapping)` while another thread may change it (an OrderedDict raises when changed mid-copy)."""
    for _ in range(100):
        try:
            return dict(mapping)
        except RuntimeError:
            continue
    return dict(mapping)


class _AdapterCollector:
    """The adapter store's counts, read at scrape time."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        loaded = stable_copy(self.store.loaded)  # the worker thread may change it meanwhile
        yield GaugeMetricFamily("softprompt_adapters_loaded", "Prompt adapters resident in the model", len(loaded))
        yield GaugeMetricFamily("softprompt_adapters_registered", "Prompt adapters served",
                                len(self.store.sources))
        yield GaugeMetricFamily("softprompt_adapter_bytes_loaded", "Bytes of resident prompt weights",
                                sum(loaded.values()))
        yield GaugeMetricFamily("softprompt_adapters_max", "Budget: most resident adapters", self.store.max_adapters)
        yield CounterMetricFamily("softprompt_adapter_evictions", "LRU evictions", self.store.evictions)
        yield CounterMetricFamily("softprompt_adapter_reloads", "Adapters read again after an eviction",
                                  self.store.reloads)


class _PrefixCacheCollector:
    """The decoder-only prefix cache's counts (zeros when there is none), read at scrape time."""

    def __init__(self, cache):
        self.cache = cache

    def collect(self):
        cache = self.cache
        yield GaugeMetricFamily("softprompt_prefix_cache_entries", "Adapters with cached prompt keys/values",
                                len(cache) if cache is not None else 0)
        yield GaugeMetricFamily("softprompt_prefix_cache_bytes", "Bytes of cached prompt keys/values",
                                cache.nbytes if cache is not None else 0)
        yield CounterMetricFamily("softprompt_prefix_cache_hits", "New rows that reused cached prompt keys/values",
                                  cache.hits if cache is not None else 0)
        yield CounterMetricFamily("softprompt_prefix_cache_misses", "Prompt keys/values computed",
                                  cache.misses if cache is not None else 0)
