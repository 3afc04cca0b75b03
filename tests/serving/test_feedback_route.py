"""Ground truth posted to a server started for one model (``mlharbor serve churn@champion``):
the serving app takes it itself, and live accuracy joins it with the logged predictions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from mlharbor.core.clock import utcnow
from mlharbor.monitoring.service import Monitor, open_prediction_log
from mlharbor.settings import Settings
from tests.serving.conftest import FEATURES


def test_feedback_on_the_serving_port_reaches_live_accuracy(
        home_settings: Settings, registry: Any, serve: Any, data: Any) -> None:
    x, y = data
    log = open_prediction_log(home_settings).start()
    monitor = Monitor(home_settings, registry, log)
    try:
        server = serve(ref="churn@champion", sink=log, feedback=monitor.feedback.add)
        ids, labels = [], []
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(20):
                row = x.iloc[i].to_dict()
                answer = client.post("/v1/endpoints/churn/predict", json=[row])
                assert answer.status_code == 200, answer.text
                ids.append(answer.json()["request_id"])
                labels.append(int(y.iloc[i]))
            sent = client.post("/v1/endpoints/churn/feedback", json={"labels": [
                {"request_id": rid, "label": label} for rid, label in zip(ids, labels,
                                                                          strict=True)]})
            assert sent.status_code == 200, sent.text
            assert sent.json() == {"endpoint": "churn", "accepted": 20}
            # Bad input is a 4xx naming what was wrong; an endpoint not served here is a 404.
            bad = client.post("/v1/endpoints/churn/feedback", json={"labels": [{"label": 1}]})
            assert bad.status_code == 400 and "request_id" in bad.text
            other = client.post("/v1/endpoints/nope/feedback",
                                json={"request_id": ids[0], "label": 1})
            assert other.status_code == 404 and "churn" in other.text
            broken = client.post("/v1/endpoints/churn/feedback", content=b"{not json")
            assert broken.status_code == 400
        log.flush()
        log.compact()
        now = utcnow()
        rows = monitor.performance("churn", start=now - timedelta(hours=1),
                                   end=now + timedelta(seconds=1), window=timedelta(hours=2))
        assert rows and rows[-1]["labelled_rows"] == 20
        assert 0.5 <= rows[-1]["metrics"]["accuracy"] <= 1.0
        # The control plane accepts it too, though `churn` is not a stored endpoint.
        assert monitor.add_feedback("churn", {"request_id": ids[0], "label": 1}) == 1
    finally:
        log.close()


def test_no_feedback_route_when_predictions_are_not_recorded(
        home_settings: Settings, serve: Any) -> None:
    settings = home_settings.model_copy(update={"monitoring": home_settings.monitoring.model_copy(
        update={"log_predictions": False})})
    server = serve(settings, ref="churn@champion", feedback=lambda name, body: 1)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        row = {name: 0.0 for name in FEATURES}
        assert client.post("/v1/endpoints/churn/predict", json=[row]).status_code == 200
        answer = client.post("/v1/endpoints/churn/feedback", json={"request_id": "r",
                                                                   "label": 1})
        assert answer.status_code == 404
