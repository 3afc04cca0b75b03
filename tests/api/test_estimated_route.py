"""``GET /api/v1/monitoring/endpoints/{name}/estimated``: accuracy estimated without labels
(CBPE) per window and version, beside the realised accuracy from feedback.

Real parts on loopback: the control-plane app behind real authentication, a prediction log in
a tmp home written through the log's own API (a logistic regression's predictions and
probabilities at chosen times), labels through feedback. The labelled reference is three days
old; an A/A window (same distribution) and a covariate-shifted one come later, labelled too, so
the realised accuracy the route reports beside each estimate can be checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from mlharbor.monitoring.service import Monitor
from mlharbor.settings import Settings
from tests.pipelines import test_triggers as scene
from tests.support import LiveServer

URL = "/api/v1/monitoring/endpoints/churn/estimated"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from mlharbor.api.app import create_app
    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.registry.endpoints import EndpointService

    tmp = tmp_path_factory.mktemp("estimated")
    settings = Settings(home=tmp / "home", pipelines={"run_jobs": False},
                        monitoring={"max_windows": 500})
    registry = open_registry(settings)
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    registry.register_version("churn", bundle)
    EndpointService(registry).create({"name": "churn", "routes": [{"ref": "churn:1"}]},
                                     actor="setup")
    identities = open_identities(registry)
    keys = {}
    for name, grants in (("viewer", ["viewer"]), ("other", ["viewer@endpoint:fraud"])):
        identities.create_identity(name, kind="user", grants=grants, actor="test")
        keys[name] = identities.create_key(name, actor="test")[1]

    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(4000, 2))
    model = LogisticRegression().fit(x_train, scene.concept(rng, x_train))
    now = datetime.now(UTC)
    monitor = Monitor(settings, registry)
    realised = {}
    try:
        for name, at, x in (
                ("ref", now - timedelta(days=3, hours=12), rng.normal(size=(3000, 2))),
                ("aa", now - timedelta(hours=12), rng.normal(size=(800, 2))),
                ("shift", now - timedelta(days=1, hours=12),
                 np.column_stack([rng.normal(1.5, 0.4, 800), rng.normal(0.0, 0.5, 800)]))):
            y = scene.concept(rng, x)
            ids = scene.log_scored(monitor, model, x, at, name)
            scene.label(monitor, ids, y)
            realised[name] = float((model.predict(x) == y).mean())
    finally:
        monitor.log.close()
    try:
        with LiveServer(create_app(settings, registry=registry)) as live:
            yield {"url": live.url, "keys": keys, "realised": realised, "now": now}
    finally:
        registry.close()


def get(server: dict[str, Any], query: str, key: str | None = "viewer") -> httpx.Response:
    headers = {"Authorization": f"Bearer {server['keys'][key]}"} if key else {}
    return httpx.get(f"{server['url']}{URL}?{query}", headers=headers, timeout=60)


def window_of(body: dict[str, Any], moment: datetime) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [r for r in body["windows"] if datetime.fromisoformat(
        r["start"]) <= moment < datetime.fromisoformat(r["end"])]
    assert len(rows) == 1, rows
    return rows[0]


def test_the_estimate_holds_the_realised_accuracy_on_an_a_a_and_a_shifted_window(
        server: dict[str, Any]) -> None:
    answer = get(server, "window=7d&step=1d")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    now = server["now"]
    assert body["metric"] == "accuracy" and "0.0096" in body["validation"]
    assert "200 windows" in body["validation"] and "two classes" in body["unavailable_when"]

    # The reference's own window has nothing labelled before it: no estimate, and why.
    ref = window_of(body, now - timedelta(days=3, hours=12))
    assert ref["estimate"] is None and ref["rows"] == 3000
    assert "no labelled production rows of version 1" in ref["unavailable"]

    # Each is fitted on the rows labelled before its window: the reference, then the shifted
    # window's rows too for the A/A window after it.
    for name, moment, reference in (("aa", now - timedelta(hours=12), 3800),
                                    ("shift", now - timedelta(days=1, hours=12), 3000)):
        row = window_of(body, moment)
        est = row["estimate"]
        assert row["unavailable"] is None and row["version"] == 1, row
        assert row["rows"] == 800 and est["n"] == 800
        assert row["reference_rows"] == reference
        # The realised accuracy is the feedback's (the performance route's), for the same rows.
        assert row["labelled_rows"] == 800
        assert row["realised"] == pytest.approx(server["realised"][name], abs=1e-9)
        assert est["lower"] <= row["realised"] <= est["upper"], (name, row)
        assert est["lower"] <= est["value"] <= est["upper"] and est["upper"] - est["lower"] < 0.2
    # The shift lowered accuracy and the estimate followed it.
    shifted = window_of(body, now - timedelta(days=1, hours=12))["estimate"]["value"]
    same = window_of(body, now - timedelta(hours=12))["estimate"]["value"]
    assert shifted < same - 0.05


def test_windows_pair_with_the_performance_route(server: dict[str, Any]) -> None:
    body = get(server, "window=7d&step=1d").json()
    perf = httpx.get(f"{server['url']}/api/v1/monitoring/endpoints/churn/performance"
                     "?window=7d&step=1d", timeout=60,
                     headers={"Authorization": f"Bearer {server['keys']['viewer']}"}).json()
    assert len(body["windows"]) == len(perf["windows"]) == 3
    for est, live in zip(body["windows"], perf["windows"], strict=True):
        # Same grid, up to the moment each request was answered.
        start_gap = abs(datetime.fromisoformat(est["start"])
                        - datetime.fromisoformat(live["start"]))
        assert start_gap < timedelta(minutes=5)
        assert est["realised"] == live["metrics"]["accuracy"]


def test_too_many_windows_or_an_unknown_metric_is_refused(server: dict[str, Any]) -> None:
    many = get(server, "window=7d&step=1m")
    assert many.status_code == 422, many.text
    assert "max_windows" in many.text and "step" in many.text
    metric = get(server, "window=7d&step=1d&metric=roc_auc")
    assert metric.status_code == 422 and "metric" in metric.text
    assert get(server, "window=7x&step=1d").status_code == 422
    assert get(server, "window=7d&step=1d&metric=f1").status_code == 200


def test_the_route_needs_credentials_scoped_to_the_endpoint(server: dict[str, Any]) -> None:
    assert get(server, "window=1d&step=1h", key=None).status_code == 401
    assert get(server, "window=1d&step=1h", key="other").status_code == 403
    assert get(server, "window=1d&step=1h").status_code == 200


def test_an_endpoint_without_predictions_has_no_windows(server: dict[str, Any]) -> None:
    answer = httpx.get(f"{server['url']}/api/v1/monitoring/endpoints/fraud/estimated",
                       headers={"Authorization": f"Bearer {server['keys']['viewer']}"},
                       timeout=60)
    assert answer.status_code == 200 and answer.json()["windows"] == []
