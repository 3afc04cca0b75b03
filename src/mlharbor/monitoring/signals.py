"""The values alert rules are evaluated on, read from the prediction log and the monitor.

Latency, error rate (requests answered by a fallback) and traffic come from the log through
:mod:`mlharbor.monitoring.traffic` (one value per request: its first row, shadow copies left
out), the helpers the dashboard's traffic charts use too; drift and accuracy from the monitor;
the backlog from the log's journal. A signal with no data is ``None``, which never counts as a
breach, except for ``traffic_stop``, where silence is the point (0 requests).

A rule on every endpoint (``*``) reads latency and error rate over all requests together; drift,
accuracy and traffic stop are per endpoint, so there the worst endpoint's value counts (the
largest drifted share, the lowest accuracy, the fewest requests among endpoints that served in
the day before the window: an endpoint that never served has not *stopped*), and the alert
names that endpoint.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import MlharborError
from mlharbor.monitoring.traffic import error_rate, latency_quantile, request_table
from mlharbor.monitoring.windows import parse_duration

if TYPE_CHECKING:
    from mlharbor.monitoring.alerts import AlertManager, AlertRule
    from mlharbor.monitoring.service import Monitor

log = logging.getLogger("mlharbor.monitoring.signals")


#: How far back an endpoint must have served for silence now to be a traffic stop (``*``).
TRAFFIC_LOOKBACK = timedelta(days=1)


def signal_values(monitor: Monitor, rules: list[AlertRule], now: datetime | None = None
                  ) -> dict[str, float | None]:
    return signal_readings(monitor, rules, now)[0]


def signal_readings(monitor: Monitor, rules: list[AlertRule], now: datetime | None = None
                    ) -> tuple[dict[str, float | None], dict[str, str | None]]:
    """Each rule's value, and for rules on every endpoint the endpoint that value came from."""
    now = now or utcnow()
    values: dict[str, float | None] = {}
    where: dict[str, str | None] = {}
    for rule in rules:
        values[rule.name], where[rule.name] = _reading(monitor, rule, now)
    return values, where


def _reading(monitor: Monitor, rule: AlertRule, now: datetime
             ) -> tuple[float | None, str | None]:
    if rule.endpoint != "*" or rule.kind not in PER_ENDPOINT:
        return _value(monitor, rule, now, None if rule.endpoint == "*" else rule.endpoint), None
    worst: tuple[float, str] | None = None
    pick = max if rule.kind == "drift" else min
    for endpoint in monitor.log.endpoints():
        if rule.kind == "traffic_stop" and not _served_before(monitor, endpoint, rule, now):
            continue
        value = _value(monitor, rule, now, endpoint)
        if value is not None and (worst is None or pick(value, worst[0]) != worst[0]):
            worst = (value, endpoint)
    return (None, None) if worst is None else worst


PER_ENDPOINT = frozenset({"drift", "accuracy", "traffic_stop"})


def _served_before(monitor: Monitor, endpoint: str, rule: AlertRule, now: datetime) -> bool:
    start = now - parse_duration(rule.window)
    return int(request_table(monitor.log, endpoint, start - TRAFFIC_LOOKBACK, start).num_rows) > 0


def _value(monitor: Monitor, rule: AlertRule, now: datetime, endpoint: str | None
           ) -> float | None:
    span = parse_duration(rule.window)
    if rule.kind == "log_backlog":
        return float(monitor.log.backlog()["journal_bytes"])
    if rule.kind in ("latency", "error_rate", "traffic_stop"):
        table = request_table(monitor.log, endpoint, now - span, now,
                              ["latency_s", "fallback"])
        if rule.kind == "traffic_stop":
            return float(table.num_rows)
        if rule.kind == "latency":
            return latency_quantile(table, rule.percentile)
        return error_rate(table)
    try:
        if rule.kind == "drift" and endpoint is not None:
            report = monitor.drift(endpoint, start=now - span, end=now)
            return float(report["dataset"]["drifted_share"])
        if rule.kind == "accuracy" and endpoint is not None:
            rows = monitor.performance(endpoint, start=now - span, end=now, window=span)
            values = [r["metrics"].get("accuracy") for r in rows]
            return float(values[-1]) if values and values[-1] is not None else None
    except MlharborError as exc:  # no profile, no traffic: no value, not a breach
        log.info("alert %s has no value for %s: %s", rule.name, endpoint, exc)
    return None


class AlertLoop:
    """Evaluates the rules every ``interval_s`` on a daemon thread."""

    def __init__(self, monitor: Monitor, alerts: AlertManager, interval_s: float, *,
                 metrics_registry: Any = None) -> None:
        self.monitor, self.alerts, self.interval_s = monitor, alerts, interval_s
        self.metrics = MonitorMetrics(metrics_registry) if metrics_registry else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[dict[str, Any]]:
        rules = list(self.alerts.rules.values())
        values, where = signal_readings(self.monitor, rules)
        if self.metrics is not None:
            self.metrics.update(rules, values)
        return self.alerts.evaluate(values, where=where)

    def start(self) -> AlertLoop:
        self._thread = threading.Thread(target=self._run, name="mlharbor-alerts", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:
                log.exception("alert evaluation failed")


class MonitorMetrics:
    """Gauges of the values only the monitor computes, for Prometheus rules to alert on."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Gauge

        self.drift = Gauge("mlharbor_drift_drifted_share",
                           "Importance-weighted share of drifted features (last evaluation).",
                           ["endpoint"], registry=registry)
        self.accuracy = Gauge("mlharbor_live_accuracy",
                              "Accuracy from feedback labels (last evaluation).", ["endpoint"],
                              registry=registry)

    def update(self, rules: list[AlertRule], values: dict[str, float | None]) -> None:
        for rule in rules:
            value = values.get(rule.name)
            if value is None or rule.endpoint == "*":
                continue
            if rule.kind == "drift":
                self.drift.labels(rule.endpoint).set(value)
            elif rule.kind == "accuracy":
                self.accuracy.labels(rule.endpoint).set(value)
