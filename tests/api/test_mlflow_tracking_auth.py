"""The real ``mlflow`` client against a control-plane server: on PostgreSQL; refused in MLflow's
own error shape (UNAUTHENTICATED, PERMISSION_DENIED, REQUEST_LIMIT_EXCEEDED); MLflow logging
in a rate-limit bucket of its own; the cache of verified keys honouring revocations (at once
when made through the server's engine, within ``security.key_cache_ttl_s`` when made by
another process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlharbor.api.app import create_app
from mlharbor.bootstrap import open_identities, open_registry
from mlharbor.settings import Settings
from tests.security import leakwatch
from tests.support import LiveServer

pytestmark = pytest.mark.xdist_group("mlflow-client")


class Served:
    """A live control plane with its registry and identity store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = open_registry(settings)
        self.identities = open_identities(self.registry)
        self.live = LiveServer(create_app(settings, registry=self.registry))

    def key(self, *grants: str, name: str) -> str:
        self.identities.create_identity(name, grants=list(grants), actor="test")
        return leakwatch.remember_secret(self.identities.create_key(name, actor="test")[1])

    @property
    def url(self) -> str:
        return self.live.url


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Served] = []

    def start(settings: Settings) -> Served:
        served = Served(settings)
        served.live.__enter__()
        started.append(served)
        return served

    yield start
    for served in started:
        served.live.__exit__(None, None, None)
        served.registry.close()


@pytest.fixture
def mlflow(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import mlflow as mlflow_module

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    yield mlflow_module
    while mlflow_module.active_run() is not None:
        mlflow_module.end_run()
    mlflow_module.set_tracking_uri("")


def _use(mlflow: Any, monkeypatch: pytest.MonkeyPatch, url: str, key: str | None) -> Any:
    if key is None:
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", key)
    mlflow.set_tracking_uri(url)
    return mlflow.tracking.MlflowClient()


def test_mlflow_client_on_postgresql(pg_url: str, tmp_path: Path, serve: Any, mlflow: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    served = serve(Settings(home=tmp_path / "home", database_url=pg_url))
    client = _use(mlflow, monkeypatch, served.url, served.key("editor", name="trainer"))
    mlflow.set_experiment("pg-tuning")
    ids = []
    for depth in (2, 4, 8):
        with mlflow.start_run(run_name=f"depth-{depth}") as run:
            mlflow.log_param("depth", depth)
            for step in range(4):
                mlflow.log_metric("loss", 1.0 / (step + depth), step=step)
            mlflow.log_metrics({"auc": 0.5 + depth / 20, "f1": 0.1 * depth})
            ids.append(run.info.run_id)
    got = client.get_run(ids[1])
    assert got.data.params == {"depth": "4"}
    assert got.data.metrics == {"loss": pytest.approx(1 / 7), "auc": pytest.approx(0.7),
                                "f1": pytest.approx(0.4)}
    history = client.get_metric_history(ids[2], "loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [
        (0, 0.125), (1, 0.1111), (2, 0.1), (3, 0.0909)]
    found = mlflow.search_runs(filter_string="metrics.auc > 0.65 and params.depth != '8'",
                               output_format="list")
    assert [r.info.run_id for r in found] == [ids[1]]
    ordered = mlflow.search_runs(order_by=["metrics.f1 DESC"], output_format="list")
    assert [r.info.run_name for r in ordered] == ["depth-8", "depth-4", "depth-2"]


def test_refusals_come_in_mlflow_shape(tmp_path: Path, serve: Any, mlflow: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException

    served = serve(Settings(home=tmp_path / "home"))
    viewer = served.key("viewer", name="reader")
    client = _use(mlflow, monkeypatch, served.url, None)
    with pytest.raises(MlflowException) as caught:
        client.create_experiment("nobody")
    assert caught.value.error_code == "UNAUTHENTICATED"
    assert "needs credentials" in caught.value.message
    client = _use(mlflow, monkeypatch, served.url, viewer)
    with pytest.raises(MlflowException) as caught:
        client.create_experiment("viewer-cannot-write")
    assert caught.value.error_code == "PERMISSION_DENIED"
    assert "'reader' may not model.write" in caught.value.message
    assert client.search_experiments()[0].name == "Default"  # reading is allowed
    with httpx.Client(base_url=served.url) as http:
        bad = http.post("/api/2.0/mlflow/runs/log-metric", json={},
                        headers={"Authorization": "Bearer mlh_aaaaaaaaaa_" + "b" * 43})
        assert bad.status_code == 401
        assert bad.json() == {"error_code": "UNAUTHENTICATED",
                              "message": "The API key is not valid. Ask an admin for a new key."}
        artifacts = http.get("/api/2.0/mlflow-artifacts/artifacts/x.txt")
        assert artifacts.status_code == 401 and artifacts.json()["error_code"] \
            == "UNAUTHENTICATED"
        native = http.get("/api/v1/models")  # mlharbor's own routes keep mlharbor's shape
        assert native.status_code == 401 and native.json()["error"]["code"] \
            == "unauthenticated"
    written = served.registry.store.db
    with written.read() as conn:
        from sqlalchemy import text

        names = [r[0] for r in conn.execute(text("SELECT name FROM tracking_experiments"))]
    assert names == ["Default"]


def test_mlflow_logging_has_its_own_rate_limit_bucket(tmp_path: Path, serve: Any,
                                                      mlflow: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException

    served = serve(Settings(home=tmp_path / "home", security={
        "rate_limit_per_minute": 1, "rate_limit_burst": 3,
        "tracking_rate_limit_per_minute": 1, "tracking_rate_limit_burst": 40}))
    key = served.key("editor", name="loop")
    client = _use(mlflow, monkeypatch, served.url, key)
    run = client.create_run("0")
    for step in range(30):  # well past the general burst of 3
        client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {key}"}) as http:
        statuses = [http.get("/api/v1/models").status_code for _ in range(5)]
        assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
    with pytest.raises(MlflowException, match="429"):  # its HTTP layer handles 429 itself
        for step in range(30, 60):
            client.log_metric(run.info.run_id, "loss", 0.0, step=step)
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {key}"}) as http:
        limited = http.post("/api/2.0/mlflow/runs/log-metric", json={
            "run_id": run.info.run_id, "key": "loss", "value": 0, "timestamp": 0, "step": 0})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "per minute" in limited.json()["message"]


def test_revoked_keys_stop_working_through_the_key_cache(tmp_path: Path, serve: Any,
                                                         mlflow: Any,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from mlflow.exceptions import MlflowException

    settings = Settings(home=tmp_path / "home", security={"key_cache_ttl_s": 1.5})
    served = serve(settings)
    here, elsewhere = served.key("editor", name="here"), served.key("editor", name="there")
    client = _use(mlflow, monkeypatch, served.url, here)
    run = client.create_run("0").info.run_id
    client.log_metric(run, "m", 1.0)  # the key is now cached
    served.identities.revoke_key(here.split("_")[1], actor="test")  # the server's own engine
    with pytest.raises(MlflowException) as caught:
        client.log_metric(run, "m", 2.0)
    assert caught.value.error_code == "UNAUTHENTICATED" and "revoked" in caught.value.message

    client = _use(mlflow, monkeypatch, served.url, elsewhere)
    client.log_metric(run, "m", 3.0)
    other = open_registry(settings)  # another process's view: its own engine
    try:
        open_identities(other).revoke_key(elsewhere.split("_")[1], actor="test")
    finally:
        other.close()
    # A cache entry is stamped when the key is checked, never extended by use: once the TTL
    # has passed, the next call asks the database and is refused.
    time.sleep(settings.security.key_cache_ttl_s + 0.1)
    with pytest.raises(MlflowException) as refused:
        client.log_metric(run, "m", 4.0)
    assert refused.value.error_code == "UNAUTHENTICATED"
    with served.registry.store.db.read() as conn:
        from sqlalchemy import text

        values = {r[0] for r in conn.execute(text(
            "SELECT value FROM tracking_metrics WHERE key = 'm'"))}
    assert {1.0, 3.0} <= values and 2.0 not in values and 4.0 not in values


def test_the_lane_answers_only_documented_request_only_routes() -> None:
    from mlharbor.api.routes import mlflow_models, mlflow_registry, mlflow_tracking
    from mlharbor.api.routes.mlflow_lane import request_only_routes

    table = request_only_routes([mlflow_tracking.router, mlflow_models.router,
                                 mlflow_registry.router])
    assert ("POST", "/api/2.0/mlflow/runs/log-metric") in table
    assert ("GET", "/api/2.0/mlflow/runs/get") in table
    assert all("{" not in path for _method, path in table)
    assert not any(path.startswith("/api/2.0/mlflow-artifacts") for _m, path in table)
