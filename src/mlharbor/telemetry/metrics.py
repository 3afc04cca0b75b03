"""Prometheus metrics of a serving app, on a registry of its own (one per app, not global).

Base units (seconds, rows), bounded labels: ``endpoint`` takes only names of configured
endpoints (anything else is counted as ``other``), ``protocol`` one of a fixed set, ``code`` the
HTTP status. Label children are cached, so recording costs a dict lookup and an add.

With ``mlharbor serve --workers N`` each worker process records into its own registry, as
above, and nothing more on the hot path; :meth:`ServingMetrics.share` (called by the runner in
each worker) makes it also write a snapshot of its registry to a folder the parent process
created for this server, every ``SNAPSHOT_INTERVAL_S`` and at shutdown. A scrape, whichever
worker answers it, merges its own live numbers with the other workers' snapshots
(:class:`SharedMetrics`): counters and histograms add up, so rates are right; gauges add up
(requests in flight, backlogs), except ``mlharbor_endpoint_ready``, which is the minimum (ready
when every worker is). The numbers of the other workers are at most ``SNAPSHOT_INTERVAL_S``
old. A worker that died (and was replaced) keeps its counts in the sum, so counters never go
back; its gauges are left out. ``mlharbor_workers`` says how many live workers were merged.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OTHER = "other"
CONTENT_TYPE = CONTENT_TYPE_LATEST
SNAPSHOT_INTERVAL_S = 0.5
# How the values of one gauge from several workers combine (default: their sum).
GAUGE_MERGE: dict[str, Callable[[Iterable[float]], float]] = {"mlharbor_endpoint_ready": min}


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
        # Resource use: the standard process metrics (process_cpu_seconds_total,
        # process_resident_memory_bytes, ...) of this serving process, and an estimate of each
        # loaded version's memory (mlharbor.serving.pool measures it at load time).
        from prometheus_client import ProcessCollector

        ProcessCollector(registry=r)
        self.model_memory = Gauge(
            "mlharbor_model_memory_bytes",
            "Estimated memory of a loaded version: the growth of this process's resident "
            "memory while it loaded and warmed up.", ["model", "version"], registry=r)
        self.model_unloads = Counter(
            "mlharbor_model_unloads_total", "Versions unloaded to stay within the model "
            "memory budget or count (serving.model_memory_budget, max_loaded_models).",
            registry=r)
        self._endpoints: frozenset[str] = frozenset()
        self._models: frozenset[str] = frozenset()
        self._children: dict[tuple[Any, ...], Any] = {}
        self.shared: SharedMetrics | None = None

    def share(self, directory: Path) -> SharedMetrics:
        """Merge this process's metrics with those of the other workers of one server that
        share ``directory`` (see the module docstring). The caller runs
        :meth:`SharedMetrics.write` every ``SNAPSHOT_INTERVAL_S`` and once at shutdown."""
        self.shared = SharedMetrics(self.registry, directory)
        return self.shared

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

    def model_memory_set(self, model: str, version: int, nbytes: int | None) -> None:
        """Record (or, with None, forget) a loaded version's memory estimate."""
        labels = (self._model_label(model), str(version))
        if nbytes is None:
            with contextlib.suppress(KeyError):  # never set: nothing to forget
                self.model_memory.remove(*labels)
        else:
            self.model_memory.labels(*labels).set(nbytes)

    def model_unloaded(self) -> None:
        self.model_unloads.inc()

    def resource_sample(self) -> dict[str, Any]:
        """This process's resource use as the control plane's dashboard shows it: CPU seconds
        and resident memory (the process metrics), the endpoints it serves and the memory
        estimate of each loaded version."""
        values = {m.name: m for m in self.registry.collect()}

        def first(name: str) -> float | None:
            metric = values.get(name)
            return float(metric.samples[0].value) if metric and metric.samples else None

        memory = values.get("mlharbor_model_memory_bytes")
        models = [{"model": s.labels["model"], "version": int(s.labels["version"]),
                   "memory_bytes": int(s.value)} for s in (memory.samples if memory else [])]
        return {"pid": os.getpid(), "cpu_seconds": first("process_cpu_seconds"),
                "resident_bytes": first("process_resident_memory_bytes"),
                "start_time": first("process_start_time_seconds"),
                "endpoints": sorted(self._endpoints), "models": models}

    def _model_label(self, model: str) -> str:
        return model if model in self._models else OTHER

    def exposition(self) -> bytes:
        if self.shared is not None:
            return generate_latest(self.shared)
        return generate_latest(self.registry)


Snapshot = list[dict[str, Any]]


def snapshot(registry: CollectorRegistry) -> Snapshot:
    """Every metric family of ``registry`` as JSON-ready data."""
    return [{"name": m.name, "type": m.type, "help": m.documentation, "unit": m.unit,
             "samples": [[x.name, x.labels, x.value] for x in m.samples]}
            for m in registry.collect()]


class SharedMetrics:
    """One worker's side of the metrics of a multi-worker server: writes its snapshot to
    ``<directory>/<pid>.json`` and, on scrape, merges its live registry with the snapshots
    of the other workers (``collect``, so ``generate_latest(shared)`` is the exposition)."""

    def __init__(self, registry: CollectorRegistry, directory: Path) -> None:
        self.registry = registry
        self.directory = directory
        self.pid = os.getpid()
        self.path = directory / f"{self.pid}.json"

    def write(self) -> None:
        """Replace this worker's snapshot at once (write aside, then rename)."""
        data = json.dumps(snapshot(self.registry)).encode()
        temp = self.path.with_suffix(".tmp")
        temp.write_bytes(data)
        temp.replace(self.path)

    def _others(self) -> Iterator[tuple[Snapshot, bool]]:
        """(snapshot, alive) of every other worker that has written one."""
        for path in sorted(self.directory.glob("*.json")):
            if path == self.path or not path.stem.isdigit():
                continue
            try:
                data = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue  # replaced or removed under us: the next scrape reads it
            yield data, _alive(int(path.stem))

    def collect(self) -> Iterator[Metric]:
        parts = [(snapshot(self.registry), True), *self._others()]
        yield from merge(parts)
        workers = GaugeMetricFamily("mlharbor_workers",
                                    "Live worker processes whose metrics this scrape merged.",
                                    value=sum(1 for _s, alive in parts if alive))
        yield workers


def merge(parts: list[tuple[Snapshot, bool]]) -> Iterator[Metric]:
    """The metric families of several workers' snapshots as one (see the module docstring);
    gauges of dead workers are left out."""
    families: dict[str, tuple[dict[str, Any], dict[tuple[Any, ...], list[float]]]] = {}
    for data, alive in parts:
        for family in data:
            if family["type"] == "gauge" and not alive:
                continue
            entry = families.get(family["name"])
            if entry is None:
                entry = families[family["name"]] = (family, {})
            values = entry[1]
            for name, labels, value in family["samples"]:
                if value is None:
                    continue
                key = (name, tuple(sorted(labels.items())))
                values.setdefault(key, []).append(float(value))
    for name, (family, values) in families.items():
        metric = Metric(name, family["help"], family["type"], family.get("unit") or "")
        combine = GAUGE_MERGE.get(name, sum) if family["type"] == "gauge" else sum
        for (sample, labels), seen in values.items():
            value = min(seen) if sample.endswith("_created") else combine(seen)
            metric.add_sample(sample, dict(labels), value)
        yield metric


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
