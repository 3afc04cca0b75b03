"""A shadow's failed copies reach the prediction log, and every reader takes them right.

A real serving app (loopback) answers from ``churn@champion`` and copies each request to a
shadow, ``churn:4``: a trusted Python model that raises for rows whose ``f0`` is above 1 (with
a message quoting the value, which must not reach the log). Its sink is a real
:class:`PredictionLog`. The failed copies are logged as rows marked ``error`` (the class name
only), counted by the rollout's :class:`LogSignals` and by traffic (as the shadow version's
errors), and left out of what means answers: live performance and drift.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlharbor.monitoring.predlog import PredictionLog
from mlharbor.monitoring.service import Monitor, open_prediction_log
from mlharbor.monitoring.traffic import traffic
from mlharbor.pipelines.rolloutsignals import LogSignals
from mlharbor.registry.endpoints import EndpointSpec
from mlharbor.settings import ServingSettings, Settings
from tests.serving.conftest import FEATURES
from tests.support import wait_until

REQUESTS = 20
BAD = 5  # requests whose f0 makes the shadow raise: every fourth
SECRET = "4242.5"

PICKY = textwrap.dedent('''
    """A model that raises for rows whose f0 is above 1, quoting the value."""
    import numpy as np


    class Picky:
        def predict(self, frame):
            if (frame["f0"] > 1.0).any():
                raise ValueError("f0 too large: " + str(frame["f0"].max()))
            return (frame["f0"] > 0).astype(int).to_numpy()
''')


def _row(i: int) -> dict[str, float]:
    row = {f: 0.01 * (i + j) for j, f in enumerate(FEATURES)}
    if i % 4 == 0:
        row["f0"] = float(SECRET)
    return row


@pytest.fixture
def logged(home_settings: Settings, registry: Any, data: Any, serve: Any,
           tmp_path: Path) -> tuple[PredictionLog, datetime, datetime, list[str]]:
    """Serve REQUESTS one-row requests through a shadowed endpoint; the log once every
    copy (answered or failed) is in it."""
    from mlharbor.registry.bundles import register_model

    source = tmp_path / "picky.py"
    source.write_text(PICKY, encoding="utf-8")
    x, _y = data
    mv = register_model(registry, "churn", source, settings=home_settings,
                        sample_input=x.head(5), training_data=x, trust_code=True)
    assert mv.version.version == 4
    settings = home_settings.model_copy(update={"serving": ServingSettings(
        batching=False, poll_interval_s=0.2)})
    log = open_prediction_log(settings)
    server = serve(settings, sink=log, endpoints=[EndpointSpec.model_validate(
        {"name": "churn", "routes": [{"ref": "churn@champion"}], "shadow": "churn:4"})])
    start = datetime.now(UTC) - timedelta(seconds=1)
    ids = []
    for i in range(REQUESTS):
        response = httpx.post(f"{server.url}/v1/endpoints/churn/predict", json=[_row(i)],
                              timeout=30)
        assert response.status_code == 200, response.text
        ids.append(response.json()["request_id"])
    def logged_both() -> bool:  # shadow copies finish in the background
        log.flush()
        log.compact()
        return bool(log.scan("churn", columns=["row"]).num_rows >= 2 * REQUESTS)

    wait_until(logged_both, 60, "the shadow copies never reached the log", interval=0.1)
    end = datetime.now(UTC) + timedelta(seconds=1)
    return log, start, end, ids


def test_failed_copies_are_logged_with_the_error_class_only(logged: Any) -> None:
    log, start, end, ids = logged
    rows = log.scan("churn", start, end).to_pylist()
    failed = [r for r in rows if r.get("error") is not None]
    assert len(rows) == 2 * REQUESTS
    assert len(failed) == BAD
    assert {r["error"] for r in failed} == {"ValueError"}
    assert all(r["shadow"] and r["version"] == 4 and r["prediction"] is None for r in failed)
    assert {r["request_id"] for r in failed} == {ids[i] for i in range(0, REQUESTS, 4)}
    # Neither the message nor the inputs of a failed copy reach the log.
    assert not any(SECRET in str(v) for r in failed for v in r.values())
    assert all(v is None for r in failed for k, v in r.items() if k.startswith("in."))
    answered = [r for r in rows if r["shadow"] and r.get("error") is None]
    assert len(answered) == REQUESTS - BAD


def test_the_rollout_signals_count_failed_and_answered_copies(logged: Any) -> None:
    log, start, end, _ids = logged
    stats = LogSignals(log).shadow("churn", start, end, 4)
    assert stats.shadow_errors == BAD
    assert stats.shadow_requests == REQUESTS - BAD
    assert stats.shadow_copies == REQUESTS
    assert stats.primary_requests == REQUESTS and stats.primary_errors == 0
    assert stats.compared_rows == REQUESTS - BAD
    assert stats.shadow_error_rate == pytest.approx(BAD / REQUESTS)
    assert stats.primary_error_rate == 0.0


def test_traffic_counts_failed_copies_as_errors_of_the_shadow(logged: Any) -> None:
    log, start, end, _ids = logged
    totals = traffic(log, "churn", start=start, end=end, step=end - start)["totals"]
    assert totals["requests"] == REQUESTS and totals["error_rate"] == 0.0
    assert totals["shadow_requests"] == REQUESTS
    assert totals["shadow_errors"] == BAD


def test_performance_and_drift_read_answers_only(home_settings: Settings, registry: Any,
                                                 logged: Any) -> None:
    log, start, end, ids = logged
    monitor = Monitor(home_settings, registry, log=log)
    monitor.add_feedback("churn", {"labels": [{"request_id": rid, "label": 1} for rid in ids]})
    rows = monitor.feedback.performance("churn", start=start, end=end, window=end - start)
    labelled = {r["version"]: r["labelled_rows"] for r in rows}
    # Every request has a label; the shadow's failed copies are no answer to judge.
    assert labelled == {1: REQUESTS, 4: REQUESTS - BAD}
    report = monitor.drift("churn", start=start, end=end, version=4)
    assert report["window"]["rows"] == REQUESTS - BAD
