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


def _log_binary(monitor: Monitor, start: datetime, n: int = 10) -> None:
    for i in range(n):
        monitor.log.emit(PredictionRecord(f"b{i}", "churn", "churn@champion", 1, {"x": i},
                                          Outputs(np.array([i % 2]), np.array([[0.4, 0.6]])),
                                          0.01, start + timedelta(minutes=i)))
    monitor.log.flush()
    monitor.log.compact()


@pytest.fixture
def churn_registry(settings: Settings) -> Any:
    """A registry with a real binary classifier ``churn`` (classes 0 and 1) as champion."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.bundles import register_model

    registry = open_registry(settings)
    x = pd.DataFrame({"x": np.arange(20.0)})
    register_model(registry, "churn", LogisticRegression().fit(x, np.arange(20) % 2),
                   settings=settings, sample_input=x.head(5))
    registry.set_alias("churn", "champion", 1)
    yield registry
    registry.close()


def test_labels_of_mixed_types_are_refused_and_performance_keeps_working(
        settings: Settings, churn_registry: Any, live_server: Any) -> None:
    """The issue's case: one number and one string, for ids served or never served: a 422
    naming the label and the model's classes, and the performance route still answers."""
    app = monitoring_app(settings)
    app.state.registry = churn_registry
    monitor = app.state.monitor = Monitor(settings, churn_registry)
    start = datetime.now(UTC) - timedelta(hours=1)
    _log_binary(monitor, start)
    with live_server(app) as server:
        url = f"{server.url}/v1/endpoints/churn/feedback"
        for ids in (("b0", "b1"), ("never-served", "nor-this")):
            mixed = httpx.post(url, json={"labels": [{"request_id": ids[0], "label": 1},
                                                     {"request_id": ids[1], "label": "abc"}]})
            assert mixed.status_code == 422, mixed.text
            error = mixed.json()["error"]
            assert "'abc'" in error["message"] and "[0, 1]" in error["message"]
            assert error["details"]["field"] == "labels[1].label"
        as_text = httpx.post(url, json={"labels": [{"request_id": f"b{i}", "label": str(i % 2)}
                                                   for i in range(10)]})
        assert as_text.status_code == 200, as_text.text
        perf = httpx.get(f"{server.url}/api/v1/monitoring/endpoints/churn/performance",
                         params={"window": "2h", "step": "2h"})
        assert perf.status_code == 200, perf.text
        (row,) = perf.json()["windows"]
    assert row["labelled_rows"] == 10 and row["metrics"]["accuracy"] == 1.0


def test_a_regressor_takes_numbers_only(settings: Settings) -> None:
    from mlharbor.core.errors import SchemaError
    from mlharbor.monitoring.labels import LabelSpec, check_labels

    spec = LabelSpec(None, True, ("price:1",))
    assert check_labels([{"label": 3}, {"label": 2.5}], spec) == [3.0, 2.5]
    for bad in ("3", True, 2**1100):
        with pytest.raises(SchemaError, match="finite number"):
            check_labels([{"label": 1.0}, {"label": bad}], spec)
    with pytest.raises(SchemaError, match="labels\\[1\\]"):  # no model known: one kind
        check_labels([{"label": 1}, {"label": "a"}], None)


def test_labels_for_unknown_request_ids_are_kept_apart_and_expire(settings: Settings) -> None:
    """Labels wait in the inbox until their request id is logged; ids never served never
    reach the store and are dropped after PENDING_TTL."""
    from mlharbor.monitoring.feedback import PENDING_TTL

    monitor = Monitor(settings)
    start = datetime.now(UTC) - timedelta(hours=1)
    monitor.add_feedback("churn", {"labels": [{"request_id": "b0", "label": 0},
                                              {"request_id": "ghost", "label": 1}]})
    assert monitor.feedback.labels("churn").num_rows == 0  # b0 not logged yet
    assert monitor.feedback.pending("churn") == 2
    _log_binary(monitor, start)  # b0 reaches the log after its label
    assert monitor.feedback.labels("churn").to_pylist() == [
        {"request_id": "b0", "row": 0, "label": 0}]
    assert monitor.feedback.pending("churn") == 1  # the ghost waits, apart from the store
    later = datetime.now(UTC) + PENDING_TTL + timedelta(minutes=1)
    assert monitor.feedback.labels("churn", now=later).num_rows == 1
    assert monitor.feedback.pending("churn") == 0
    assert not [n for n in monitor.feedback.store.names() if "ghost" in n]


def test_a_store_holding_bad_segments_written_by_older_versions_recovers(
        settings: Settings, caplog: Any) -> None:
    """Label files as the old code wrote them (one int64 file, one text file from a mixed
    batch, one that is not Parquet at all): performance answers from what can be read."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    monitor = Monitor(settings)
    start = datetime.now(UTC) - timedelta(hours=1)
    _log_binary(monitor, start)

    def old_file(name: str, labels: list[Any]) -> None:
        sink = io.BytesIO()
        pq.write_table(pa.table({
            "request_id": [f"b{i}" for i in range(len(labels))],
            "row": pa.array([0] * len(labels), pa.int64()), "label": labels,
            "received_at": pa.array([1] * len(labels), pa.int64())}), sink)
        monitor.feedback.store.put(f"endpoint=churn/{name}.parquet", sink.getvalue())

    old_file("1-ints", [i % 2 for i in range(6)])
    old_file("2-mixed", ["0", "1", "0", "abc"])  # the mixed batch, stored as text
    monitor.feedback.store.put("endpoint=churn/3-torn.parquet", b"PAR1 torn")
    (row,) = monitor.feedback.performance("churn", start=start, end=datetime.now(UTC),
                                          window=timedelta(hours=2))
    assert row["labelled_rows"] == 6  # b0..b5; b0..b3 from both files (same received_at)
    assert "3-torn.parquet" in caplog.text
