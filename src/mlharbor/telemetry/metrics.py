"""Prometheus metrics of a serving app, on a registry of its own (one per app, not global).

Base units (seconds, rows), bounded labels: ``endpoint`` takes only names of configured
endpoints (anything else is counted as ``other``), ``protocol`` one of a fixed set, ``code`` the
HTTP status. Label children are cached, so recording costs a dict lookup and an add.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OTHER = "other"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServingMetrics:
    """Every serving metric, registered on ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = RequestStats()
        r.register(self._requests)
        self.in_flight = Gauge("mlharbor_in_flight_requests",
                               "Prediction requests being handled.", registry=r)
        self.batch_rows = Histogram("mlharbor_batch_rows", "Rows per inference call.",
                                    ["endpoint"], buckets=BATCH_BUCKETS, registry=r)
        self.fallbacks = Counter("mlharbor_fallbacks_total",
                                 "Requests answered by a fallback, by why.",
                                 ["endpoint", "reason"], registry=r)
        self.shed = Counter("mlharbor_shed_requests_total",
                            "Requests refused with 503 because too many were in flight.",
                            registry=r)
        self.load_time = Histogram("mlharbor_model_load_seconds",
                                   "Time to download, verify, load and warm up a version.",
                                   ["model"], buckets=LOAD_BUCKETS, registry=r)
        self.load_failures = Counter("mlharbor_model_load_failures_total",
                                     "Versions that failed to load.", ["model"], registry=r)
        self.versions_ready = Gauge("mlharbor_endpoint_ready",
                                    "1 when the endpoint has a loaded version to answer with.",
                                    ["endpoint"], registry=r)
        self.shadow_drops = Counter(
            "mlharbor_shadow_dropped",
            "Shadow copies not run because the shadow's own capacity was full.",
            ["endpoint"], registry=r)
        self.records_dropped = Counter("mlharbor_prediction_records_dropped_total",
                                       "Prediction records dropped because the sink lagged.",
                                       registry=r)
        self._endpoints: frozenset[str] = frozenset()
        self._models: frozenset[str] = frozenset()
        self._children: dict[tuple[Any, ...], Any] = {}

    def set_known(self, endpoints: set[str], models: set[str]) -> None:
        """The label values allowed from now on (the configured endpoints and models)."""
        self._endpoints = frozenset(endpoints)
        self._models = frozenset(models) | self._models

    def endpoint_label(self, name: str | None) -> str:
        return name if name is not None and name in self._endpoints else OTHER

    def observe_request(self, protocol: str, endpoint: str | None, code: int,
                        seconds: float) -> None:
        label = endpoint if endpoint is not None and endpoint in self._endpoints else OTHER
        self._requests.observe(protocol, label, code, seconds)

    def track_in_flight(self, read: Callable[[], float]) -> None:
        """Read the in-flight count at scrape time instead of counting on every request."""
        self.in_flight.set_function(read)

    def observe_batch(self, endpoint: str, rows: int) -> None:
        key = ("b", endpoint)
        child = self._children.get(key)
        if child is None:
            child = self.batch_rows.labels(self.endpoint_label(endpoint))
            self._children[key] = child
        child.observe(rows)

    def shadow_dropped(self, endpoint: str) -> None:
        key = ("s", endpoint)
        child = self._children.get(key)
        if child is None:
            child = self.shadow_drops.labels(self.endpoint_label(endpoint))
            self._children[key] = child
        child.inc()

    def fallback(self, endpoint: str, reason: str) -> None:
        self.fallbacks.labels(self.endpoint_label(endpoint), reason).inc()

    def model_loaded(self, model: str, seconds: float) -> None:
        self.load_time.labels(self._model_label(model)).observe(seconds)

    def model_load_failed(self, model: str) -> None:
        self.load_failures.labels(self._model_label(model)).inc()

    def _model_label(self, model: str) -> str:
        return model if model in self._models else OTHER

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestStats:
    """Request count and latency histogram, recorded with plain arithmetic, exported on scrape.

    Recording happens on the event loop for every request, so it avoids the locks of
    ``prometheus_client``'s metric objects: one dict lookup, two adds and a bisect.
    """

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str, int], list[Any]] = {}

    def observe(self, protocol: str, endpoint: str, code: int, seconds: float) -> None:
        key = (protocol, endpoint, code)
        stat = self._stats.get(key)
        if stat is None:
            stat = [0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1)]
            self._stats[key] = stat
        stat[0] += 1
        stat[1] += seconds
        stat[2][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("mlharbor_requests", "HTTP requests answered.",
                                       labels=["protocol", "endpoint", "code"])
        latency = HistogramMetricFamily(
            "mlharbor_request_duration_seconds",
            "Time from request start to response, in seconds.",
            labels=["protocol", "endpoint"])
        merged: dict[tuple[str, str], list[Any]] = {}
        for (protocol, endpoint, code), (count, total, buckets) in list(self._stats.items()):
            requests.add_metric([protocol, endpoint, str(code)], count)
            into = merged.setdefault((protocol, endpoint),
                                     [0.0, [0] * (len(LATENCY_BUCKETS) + 1)])
            into[0] += total
            into[1] = [a + b for a, b in zip(into[1], buckets, strict=True)]
        for (protocol, endpoint), (total, buckets) in merged.items():
            running, cumulative = 0, []
            for bound, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            latency.add_metric([protocol, endpoint], cumulative, total)
        yield requests
        yield latency
