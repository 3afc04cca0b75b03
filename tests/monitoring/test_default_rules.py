"""The default alert rules (issue 14): on unless turned off, replaced or extended by the rules
file, and evaluated per endpoint for drift, accuracy and traffic stop, so the Alerts page fires
when the Drift page says "Drift detected" without anyone writing a rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import yaml

from mlharbor.bootstrap import open_registry
from mlharbor.core.records import PredictionRecord
from mlharbor.data.profile import build_profile
from mlharbor.monitoring.alerts import AlertManager, configured_rules
from mlharbor.monitoring.reference import infer_kinds
from mlharbor.monitoring.service import Monitor, open_alerts
from mlharbor.monitoring.signals import AlertLoop, signal_readings
from mlharbor.settings import Settings
from tests.monitoring.drift_data import make_frame

DEFAULTS = {"default-error-rate", "default-latency-p99", "default-drift",
            "default-live-accuracy", "default-traffic-stop", "default-log-backlog"}


def _with(settings: Settings, **monitoring: object) -> Settings:
    return settings.model_copy(update={"monitoring": settings.monitoring.model_copy(
        update=monitoring)})


def test_defaults_are_on_and_a_rules_file_replaces_or_extends_them(
        settings: Settings, tmp_path: Path) -> None:
    rules, sources = configured_rules(settings)
    assert {r.name for r in rules} == DEFAULTS and set(sources.values()) == {"default"}
    drift = next(r for r in rules if r.name == "default-drift")
    assert drift.endpoint == "*" and drift.breached(0.3) and not drift.breached(0.2999)
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"rules": [
        {"name": "default-latency-p99", "kind": "latency", "percentile": 0.99,
         "threshold": 0.25},
        {"name": "churn-errors", "kind": "error_rate", "endpoint": "churn", "threshold": 0.1},
    ]}))
    both = _with(settings, alert_rules_file=rules_file)
    rules, sources = configured_rules(both)
    named = {r.name: r for r in rules}
    assert set(named) == DEFAULTS | {"churn-errors"}
    assert named["default-latency-p99"].threshold == 0.25
    assert sources["default-latency-p99"] == "file" and sources["default-drift"] == "default"
    only_file = _with(both, default_alert_rules=False)
    assert {r.name for r in configured_rules(only_file)[0]} == {"default-latency-p99",
                                                                 "churn-errors"}
    nothing = _with(settings, default_alert_rules=False)
    assert configured_rules(nothing) == ([], {})
    assert open_alerts(nothing, Monitor(nothing)) is None


def _served(settings: Settings) -> Monitor:
    """``churn`` serves a version with a reference profile and its traffic drifted in the last
    half hour; ``quiet`` served two hours ago and then stopped."""
    registry = open_registry(settings)
    rng = np.random.default_rng(5)
    reference = make_frame(rng, 20_000)
    bundle = settings.home.parent / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "model.txt").write_text("a model")
    registry.create_model("churn")
    registry.register_version("churn", bundle, lineage={"reference_profile": build_profile(
        reference, infer_kinds(reference), importances={"x2": 0.5})})
    monitor = Monitor(settings, registry)
    now = datetime.now(UTC)
    for i, row in enumerate(make_frame(rng, 2_000, "mean").to_dict(orient="records")):
        monitor.log.emit(PredictionRecord(f"r{i}", "churn", "churn@champion", 1, row,
                                          [int(row["x2"] > 0)], 0.01,
                                          now - timedelta(minutes=30, seconds=-0.5 * i)))
    for i in range(5):
        monitor.log.emit(PredictionRecord(f"q{i}", "quiet", "quiet@champion", 1, {"x": 1.0},
                                          [0], 0.01, now - timedelta(hours=2, seconds=i)))
    monitor.log.flush()
    monitor.log.compact()
    return monitor


def test_default_drift_rule_fires_when_the_drift_report_says_drift(settings: Settings) -> None:
    monitor = _served(settings)
    try:
        now = datetime.now(UTC)
        report = monitor.drift("churn", start=now - timedelta(hours=1), end=now)
        assert report["dataset"]["drifted"]  # what the Drift page shows as "Drift detected"
        rules, sources = configured_rules(settings)
        alerts = AlertManager(rules, sources=sources)
        loop = AlertLoop(monitor, alerts, 60)
        first = loop.tick()
        assert "default-drift" not in {e["alert"] for e in first}  # 2 of 3 evaluations
        events = {e["alert"]: e for e in loop.tick()}
        drift = events["default-drift"]
        assert drift["state"] == "firing" and drift["endpoint"] == "churn"
        assert "churn (the worst endpoint)" in drift["summary"]
        # 'quiet' served in the day before the window and nothing since: a traffic stop.
        stop = events["default-traffic-stop"]
        assert stop["endpoint"] == "quiet" and stop["value"] == 0.0
        states = {r["name"]: r for r in alerts.rule_states()}
        assert states["default-drift"]["state"] == "firing"
        assert states["default-drift"]["direction"] == "at or above"
        assert states["default-drift"]["threshold_text"] == "30%"
        assert states["default-error-rate"]["state"] == "ok"
        assert states["default-drift"]["last_endpoint"] == "churn"
        assert states["default-drift"]["source"] == "default"
    finally:
        monitor.registry.close()


def test_a_home_without_traffic_has_no_traffic_stop(settings: Settings) -> None:
    """An endpoint that never served has not stopped: no value, so no alert on a fresh home."""
    monitor = Monitor(settings)
    rules, _sources = configured_rules(settings)
    values, where = signal_readings(monitor, rules)
    assert values["default-traffic-stop"] is None and where["default-traffic-stop"] is None
    assert values["default-drift"] is None and values["default-live-accuracy"] is None
    alerts = AlertManager(rules)
    for _ in range(3):
        assert alerts.evaluate(values) == []
