"""Feedback: labels over HTTP, joined with the log into live metrics per window and version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from mlharbor.api.errors import install_error_handlers
from mlharbor.api.routes import monitoring as routes
from mlharbor.core.records import PredictionRecord
from mlharbor.monitoring.feedback import parse_labels
from mlharbor.monitoring.service import Monitor
from mlharbor.settings import Settings


class Outputs:  # the shape serving hands over: predictions and class probabilities
    def __init__(self, predictions: Any, probabilities: Any) -> None:
        self.predictions, self.probabilities = predictions, probabilities


def monitoring_app(settings: Settings) -> FastAPI:
    app = FastAPI()
    app.state.settings = settings
    install_error_handlers(app, debug=False)
    app.include_router(routes.router)
    return app


def log_predictions(monitor: Monitor, start: datetime) -> list[tuple[str, int]]:
    """Two days of a binary classifier: version 1 is right 90% of the time, version 2 60%."""
    rng = np.random.default_rng(0)
    truth = []
    for day in range(2):
        version, right = (1, 0.9) if day == 0 else (2, 0.6)
        for i in range(400):
            label = int(rng.random() < 0.5)
            predicted = label if rng.random() < right else 1 - label
            score = 0.5 + (0.4 if predicted else -0.4) * rng.random()
            monitor.log.emit(PredictionRecord(
                f"d{day}-{i}", "churn", "churn@champion", version, {"tenure": i},
                Outputs(np.array([predicted]), np.array([[1 - score, score]])), 0.01,
                start + timedelta(days=day, minutes=i)))
            truth.append((f"d{day}-{i}", label))
    monitor.log.flush()
    monitor.log.compact()
    return truth


def test_feedback_over_http_gives_live_metrics_per_window_and_version(
        settings: Settings, live_server: Any) -> None:
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - \
        timedelta(days=2)
    app = monitoring_app(settings)
    monitor = app.state.monitor = Monitor(settings)
    truth = log_predictions(monitor, start)
    with live_server(app) as server:
        one = httpx.post(f"{server.url}/v1/endpoints/churn/feedback",
                         json={"request_id": truth[0][0], "label": truth[0][1]})
        assert one.status_code == 200 and one.json()["accepted"] == 1
        many = httpx.post(f"{server.url}/v1/endpoints/churn/feedback",
                          json={"labels": [{"request_id": r, "label": y} for r, y in truth]})
        assert many.json()["accepted"] == len(truth)
        bad = httpx.post(f"{server.url}/v1/endpoints/churn/feedback",
                         json={"labels": [{"request_id": "x", "label": [1]}]})
        assert bad.status_code == 400
        assert "labels[0].label" in bad.json()["error"]["message"]
    rows = monitor.feedback.performance(
        "churn", start=start, end=start + timedelta(days=2), window=timedelta(days=1),
        validation={1: {"accuracy": 0.9, "f1": 0.9}, 2: {"accuracy": 0.9}})
    assert [(r["version"], r["labelled_rows"]) for r in rows] == [(1, 400), (2, 400)]
    first, second = rows
    assert first["metrics"]["accuracy"] == pytest.approx(0.9, abs=0.04)
    assert 0.0 < first["metrics"]["roc_auc"] <= 1.0 and first["metrics"]["f1"] > 0.8
    assert first["degraded"] == [] and second["degraded"] == ["accuracy"]


def test_labels_that_arrive_twice_keep_the_last(settings: Settings) -> None:
    monitor = Monitor(settings)
    start = datetime.now(UTC) - timedelta(hours=1)
    for i, y in enumerate([1.0, 2.0, 3.0]):
        monitor.log.emit(PredictionRecord(f"r{i}", "price", "price@champion", 1, {"x": i},
                                          [y + 0.5], 0.01, start + timedelta(minutes=i)))
    monitor.log.flush()
    monitor.log.compact()
    monitor.add_feedback("price", {"labels": [{"request_id": f"r{i}", "label": 0.0}
                                              for i in range(3)]})
    monitor.add_feedback("price", {"labels": [{"request_id": f"r{i}", "label": y}
                                              for i, y in enumerate([1.0, 2.0, 3.0])]})
    (row,) = monitor.feedback.performance("price", start=start, end=datetime.now(UTC),
                                          window=timedelta(hours=2))
    assert row["task"] == "regression"
    assert row["metrics"] == {"mae": pytest.approx(0.5), "rmse": pytest.approx(0.5)}


@pytest.mark.parametrize("body, field", [
    ({}, "request_id"), ({"labels": []}, "at least one"), ({"labels": [1]}, "labels[0]"),
    ({"request_id": "r", "label": 1, "row": -1}, "row"),
])
def test_bad_feedback_names_the_field(body: Any, field: str) -> None:
    from mlharbor.core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=field.replace("[", r"\[")):
        parse_labels(body)


def test_live_metrics_are_compared_with_the_registered_validation_metrics(
        settings: Settings, tmp_path: Any) -> None:
    from mlharbor.bootstrap import open_registry

    registry = open_registry(settings)
    try:
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        (bundle / "model.txt").write_text("a model")
        registry.create_model("churn")
        for _ in range(2):
            registry.register_version("churn", bundle, metrics={"accuracy": 0.88})
        monitor = Monitor(settings, registry)
        start = datetime.now(UTC) - timedelta(days=3)
        truth = log_predictions(monitor, start)
        monitor.feedback.add("churn", {"labels": [{"request_id": r, "label": y}
                                                  for r, y in truth]})
        rows = monitor.performance("churn", start=start, end=start + timedelta(days=2),
                                   window=timedelta(days=1))
        assert [(r["version"], r["degraded"]) for r in rows] == [(1, []), (2, ["accuracy"])]
        assert rows[1]["validation"] == {"accuracy": 0.88}
    finally:
        registry.close()
