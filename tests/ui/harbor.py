"""A whole small harbor for dashboard tests: trained versions, an endpoint, real served traffic.

``churn`` is trained twice by the real train job (lineage, evaluation report, reference profile),
its description and a tag hold markup that must show as text, the ``churn`` endpoint routes
75/25 over ``@champion`` and ``churn:1`` with a shadow and a fallback, and predictions are
served by the real serving app into the real prediction log. The control plane then runs on a
loopback port with its alert loop, and feedback labels are posted through it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

import mlharbor
from mlharbor.settings import Settings
from tests.support import LiveServer

XSS = '<img src=x onerror="document.title=\'owned\'">'
RECIPE = """\
data:
  path: churn.csv
  target: churn
  id_columns: [customer_id]
candidates:
  - name: logistic
    estimator: sklearn.linear_model.LogisticRegression
    params: {max_iter: 300}
validation: {holdout: 0.25, folds: 2, seed: 7, bootstrap: 50}
metrics: {primary: f1}
gates:
  - better than baseline
register: {name: churn, alias: champion}
"""
# Any request slower than 0 s breaches: the rule fires on the loop's first evaluation.
RULES = [{"name": "churn-latency", "kind": "latency", "endpoint": "churn", "threshold": 0.0,
          "window": "1h", "m": 1, "n": 1, "severity": "critical"}]
REQUESTS = 40


@dataclasses.dataclass
class Harbor:
    url: str
    keys: dict[str, str]  # role -> API key
    settings: Settings
    registry: Any
    served_rows: int


def _serve_predictions(settings: Settings, registry: Any, frame: pd.DataFrame,
                       metrics: Any) -> list[tuple[str, int, int]]:
    """Send REQUESTS requests of 1 to 3 rows through the real serving app; returns
    (request id, row, label) for every predicted row."""
    from mlharbor.monitoring.service import open_prediction_log
    from mlharbor.serving.app import create_serving_app

    log = open_prediction_log(settings).start()
    labelled: list[tuple[str, int, int]] = []
    try:
        app = create_serving_app(settings, registry, sink=log, auth=False, metrics=metrics)
        with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            deadline = time.monotonic() + 60
            while client.get("/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "serving never became ready"
                time.sleep(0.1)
            offset = 0
            for i in range(REQUESTS):
                rows = frame.iloc[offset:offset + 1 + i % 3]
                offset += len(rows)
                features = rows.drop(columns=["customer_id", "churn"])
                answer = client.post("/v1/endpoints/churn/predict",  # NaN -> null
                                     content=features.to_json(orient="records"),
                                     headers={"Content-Type": "application/json"})
                assert answer.status_code == 200, answer.text
                rid = answer.json()["request_id"]
                labelled += [(rid, j, int(y)) for j, y in enumerate(rows["churn"])]
    finally:
        log.close()  # everything journaled is now in Parquet segments
    return labelled


@pytest.fixture(scope="package")
def harbor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harbor]:
    from mlharbor.api.app import create_app
    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.monitoring.traffic import ResourceReporter
    from mlharbor.pipelines.train_job import train
    from mlharbor.registry.endpoints import EndpointService
    from mlharbor.telemetry.metrics import ServingMetrics
    from mlharbor.training.recipe import recipe_from_yaml

    tmp = tmp_path_factory.mktemp("harbor")
    frame = pd.read_csv(Path(mlharbor.__file__).parent / "demo" / "churn.csv").head(800)
    frame.to_csv(tmp / "churn.csv", index=False)
    (tmp / "rules.yml").write_text(yaml.safe_dump({"rules": RULES}))
    settings = Settings(home=tmp / "home", training={"n_jobs": 1},
                        monitoring={"alert_rules_file": str(tmp / "rules.yml"),
                                    "evaluation_interval_s": 0.3})
    registry = open_registry(settings)
    identities = open_identities(registry)
    keys = {}
    for role in ("admin", "viewer", "predictor"):
        identities.create_identity(f"{role}-1", kind="user", grants=[role], actor="test")
        keys[role] = identities.create_key(f"{role}-1", actor="test")[1]
    recipe = recipe_from_yaml(RECIPE, base_dir=tmp)
    train(recipe, registry=registry, settings=settings, actor="trainer")
    train(recipe, registry=registry, settings=settings, actor="trainer")  # champion -> 2
    registry.update_model("churn", description=f"Churn model {XSS}", tags={"team": XSS},
                          actor="test")
    EndpointService(registry).create({
        "name": "churn", "description": "customer churn",
        "routes": [{"ref": "churn@champion", "weight": 75}, {"ref": "churn:1", "weight": 25}],
        "shadow": "churn:2", "fallback": ["churn:1"],
    }, actor="deployer-1", reason="launch")
    # What `mlharbor deploy kubernetes` records (mlharbor.deploy.base), without a cluster.
    registry.store.record(actor="deployer-1", action="deploy.kubernetes",
                          resource="model/churn/version/2", outcome="success",
                          details={"target": "kubernetes", "ref": "churn:2",
                                   "image": "mlharbor/churn:2", "version": 2})
    # This process served, and its models stay loaded in the serving app's pool: it reports
    # its resource use as `mlharbor serve` does (cli/serve.py), for the endpoint page.
    metrics = ServingMetrics()
    labelled = _serve_predictions(settings, registry, frame, metrics)
    reporter = ResourceReporter(settings.home, metrics.resource_sample, interval_s=1.0).start()
    app = create_app(settings, registry=registry)
    try:
        with LiveServer(app) as server:
            feedback = httpx.post(
                f"{server.url}/v1/endpoints/churn/feedback",
                headers={"Authorization": f"Bearer {keys['predictor']}"},
                json={"labels": [{"request_id": r, "row": j, "label": y}
                                 for r, j, y in labelled]})
            assert feedback.status_code == 200, feedback.text
            yield Harbor(server.url, keys, settings, registry, len(labelled))
    finally:
        reporter.stop()
        registry.close()
