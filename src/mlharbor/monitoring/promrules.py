"""The same alert rules as Prometheus alerting rules, for teams that alert from Prometheus.

M-of-N maps to a subquery: ``count_over_time((breach)[n*step:step]) >= m`` counts the
evaluations (one per ``step``) that breached among the last ``n``, exactly like
:class:`~mlharbor.monitoring.alerts.AlertManager`. Metric names are the serving app's
(``mlharbor_requests_total``, ``mlharbor_request_duration_seconds``), the log's
(``mlharbor_prediction_log_backlog_bytes``) and the monitor's gauges
(``mlharbor_drift_drifted_share``, ``mlharbor_live_accuracy``).
"""

from __future__ import annotations

from typing import Any

from mlharbor.monitoring.alerts import KINDS, AlertRule
from mlharbor.monitoring.windows import parse_duration


def prometheus_rules(rules: list[AlertRule], *, step: str = "1m",
                     group: str = "mlharbor") -> dict[str, Any]:
    return {"groups": [{"name": group, "rules": [_rule(r, step) for r in rules]}]}


def _rule(rule: AlertRule, step: str) -> dict[str, Any]:
    window = _prom_duration(rule.window)
    selector = "" if rule.endpoint == "*" else f'endpoint="{rule.endpoint}"'
    by = " by (endpoint)"
    if rule.kind == "latency":
        expr = (f"histogram_quantile({rule.percentile}, sum by (le, endpoint) "
                f"(rate(mlharbor_request_duration_seconds_bucket{{{selector}}}[{window}])))")
    elif rule.kind == "error_rate":
        errors = ", ".join(x for x in (selector, 'code=~"5.."') if x)
        expr = (f"sum{by} (rate(mlharbor_requests_total{{{errors}}}[{window}])) / "
                f"sum{by} (rate(mlharbor_requests_total{{{selector}}}[{window}]))")
    elif rule.kind == "traffic_stop":
        expr = f"sum{by} (increase(mlharbor_requests_total{{{selector}}}[{window}]))"
    elif rule.kind == "drift":
        expr = f"max{by} (mlharbor_drift_drifted_share{{{selector}}})"
    elif rule.kind == "accuracy":
        expr = f"min{by} (mlharbor_live_accuracy{{{selector}}})"
    else:
        expr = "max(mlharbor_prediction_log_backlog_bytes)"
    op = ">" if KINDS[rule.kind][1] == "above" else "<"
    breach = f"({expr}) {op} {rule.threshold!r}"
    span = _prom_duration_seconds(parse_duration(step).total_seconds() * rule.n)
    return {
        "alert": rule.name,
        "expr": f"count_over_time(({breach})[{span}:{step}]) >= {rule.m}",
        "labels": {"severity": rule.severity, "kind": rule.kind},
        "annotations": {
            "summary": f"{rule.name}: {KINDS[rule.kind][0]} {op} {rule.threshold} in "
                       f"{rule.m} of the last {rule.n} evaluations",
            "description": rule.description or f"endpoint {rule.endpoint}",
        },
    }


def _prom_duration(text: str) -> str:
    return _prom_duration_seconds(parse_duration(text).total_seconds())


def _prom_duration_seconds(seconds: float) -> str:
    seconds = max(round(seconds), 1)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
