"""The real ``mlflow`` client (mlflow-skinny) against a real control-plane server: unchanged
MLflow tracking code records into mlharbor, and registering goes through mlharbor's format
checks (skops registers, a pickle is refused unless trusted by its sha256)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlharbor.api.app import create_app
from mlharbor.bootstrap import open_registry
from mlharbor.settings import Settings
from tests.security.fixtures import admin_headers_for
from tests.support import LiveServer

pytestmark = pytest.mark.xdist_group("mlflow-client")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Settings]]:
    settings = Settings(home=tmp_path_factory.mktemp("mlflow") / "home",
                        security={"rate_limit_per_minute": 0})
    token = admin_headers_for(settings)["Authorization"].split(" ", 1)[1]
    registry = open_registry(settings)
    try:
        with LiveServer(create_app(settings, registry=registry)) as live:
            yield live.url, token, settings
    finally:
        registry.close()


@pytest.fixture
def mlflow(server: tuple[str, str, Settings], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import mlflow as mlflow_module

    url, token, _settings = server
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # log_model infers pip requirements by loading the model in a fresh interpreter (~20 s
    # each here); nothing tested depends on them, so MLflow falls back to its defaults.
    monkeypatch.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "0")
    mlflow_module.set_tracking_uri(url)
    yield mlflow_module
    while mlflow_module.active_run() is not None:
        mlflow_module.end_run()
    mlflow_module.set_tracking_uri("")


def test_logging_nested_runs_search_and_history(mlflow: Any, tmp_path: Path) -> None:
    mlflow.set_experiment("churn-tuning")
    note = tmp_path / "notes.txt"
    note.write_text("first try")
    with mlflow.start_run(run_name="parent") as parent:
        mlflow.log_param("model", "rf")
        mlflow.log_params({"depth": 3, "trees": 100})
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"auc": 0.91, "f1": 0.8})
        mlflow.set_tag("team", "retention")
        mlflow.log_artifact(str(note))
        mlflow.log_artifact(str(note), artifact_path="docs")
        with mlflow.start_run(run_name="child", nested=True) as child:
            mlflow.log_metric("auc", 0.5)
    client = mlflow.tracking.MlflowClient()
    got = client.get_run(parent.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"model": "rf", "depth": "3", "trees": "100"}
    assert got.data.metrics["loss"] == pytest.approx(0.2)
    assert got.data.tags["team"] == "retention"
    history = client.get_metric_history(parent.info.run_id, "loss")
    assert [(m.step, round(m.value, 3)) for m in history] == [
        (0, 1.0), (1, 0.5), (2, 0.333), (3, 0.25), (4, 0.2)]
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] \
        == parent.info.run_id
    found = mlflow.search_runs(filter_string="metrics.auc > 0.9 and params.model = 'rf'",
                               output_format="list")
    assert [r.info.run_id for r in found] == [parent.info.run_id]
    ordered = mlflow.search_runs(order_by=["metrics.auc ASC"], output_format="list")
    assert [r.info.run_name for r in ordered] == ["child", "parent"]
    names = sorted(a.path for a in client.list_artifacts(parent.info.run_id))
    assert names == ["docs", "notes.txt"]
    local = client.download_artifacts(parent.info.run_id, "docs/notes.txt", str(tmp_path))
    assert Path(local).read_text() == "first try"


def test_artifact_folders_that_differ_only_in_case_stay_apart(mlflow: Any,
                                                              tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("upper")
    (tmp_path / "b.txt").write_text("lower")
    mlflow.set_experiment("artifact-case")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "a.txt"), "Model")
        mlflow.log_artifact(str(tmp_path / "b.txt"), "model")
    client = mlflow.tracking.MlflowClient()
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/b.txt"]
    got = Path(client.download_artifacts(run.info.run_id, "model", str(tmp_path / "dl")))
    assert sorted(p.name for p in got.iterdir()) == ["b.txt"]


def test_failed_run_and_bad_input_get_mlflow_errors(mlflow: Any, server: Any) -> None:
    from mlflow.exceptions import MlflowException

    mlflow.set_experiment("errors")
    with pytest.raises(RuntimeError), mlflow.start_run() as run:
        raise RuntimeError("boom")
    client = mlflow.tracking.MlflowClient()
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    with pytest.raises(MlflowException) as caught:
        client.get_run("0" * 32)
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException, match="OR is not supported"):
        mlflow.search_runs(filter_string="metrics.a > 1 or metrics.b < 2")
    url, token, _settings = server
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers) as http:
        r = http.post("/api/2.0/mlflow/runs/log-batch", json={
            "run_id": run.info.run_id, "metrics": [{"key": "ok", "value": 1, "timestamp": 1,
                                                     "step": 0},
                                                    {"key": "bad", "value": "high"}]})
        assert r.status_code == 400
        assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "metrics[1].value" in r.json()["message"]
        # nothing of the refused batch was written
        assert "ok" not in client.get_run(run.info.run_id).data.metrics
        r = http.post("/api/2.0/mlflow/runs/log-batch", content=b"{not json")
        assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        r = http.get("/api/2.0/mlflow/gateway/routes/list")
        assert r.status_code == 404
        assert r.json()["error_code"] == "ENDPOINT_NOT_FOUND"
        assert "does not support" in r.json()["message"]
        r = httpx.post(f"{url}/api/2.0/mlflow/runs/create", json={"experiment_id": "0"})
        assert r.status_code == 401


def _kept(server: Any) -> list[str]:
    """The folders of registered versions' kept MLflow files, through the artifact proxy."""
    url, token, _settings = server
    r = httpx.get(f"{url}/api/2.0/mlflow-artifacts/artifacts",
                  params={"path": "registered-models"},
                  headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return sorted(f["path"] for f in r.json().get("files", []))


def test_autolog_and_register_model_through_format_checks(mlflow: Any, server: Any) -> None:
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=60, n_features=4, random_state=0)
    mlflow.set_experiment("autolog")
    mlflow.sklearn.autolog(log_input_examples=False, log_model_signatures=False)
    try:
        # MLflow warns about its own type hints; pytest here turns warnings into errors,
        # which autologging would swallow, logging nothing.
        with warnings.catch_warnings(), mlflow.start_run() as run:
            warnings.simplefilter("ignore")
            LogisticRegression(max_iter=200).fit(x, y)
    finally:
        mlflow.sklearn.autolog(disable=True)
    got = mlflow.tracking.MlflowClient().get_run(run.info.run_id)
    assert "training_accuracy_score" in got.data.metrics
    assert got.data.params["max_iter"] == "200"
    # autolog's default model is a pickle: refused, saying how to fix it, keeping nothing
    kept_before = _kept(server)
    with pytest.raises(MlflowException) as caught:
        mlflow.register_model(f"runs:/{run.info.run_id}/model", "churn-pickle")
    assert _kept(server) == kept_before
    message = str(caught.value)
    assert "serialization_format='skops'" in message and "mlharbor.trust_pickle_sha256" \
        in message
    with warnings.catch_warnings(), mlflow.start_run() as run2:
        warnings.simplefilter("ignore")
        mlflow.sklearn.log_model(LogisticRegression().fit(x, y), name="model",
                                 serialization_format="skops")
    version = mlflow.register_model(f"runs:/{run2.info.run_id}/model", "churn-skops")
    assert version.version == "1"
    assert len(_kept(server)) == len(kept_before) + 1
    run_after = mlflow.tracking.MlflowClient().get_run(run2.info.run_id)
    assert run_after.data.tags["mlharbor.model_version"] == "churn-skops:1"


def test_models_uri_loads_the_files_registered_which_never_change(mlflow: Any, server: Any,
                                                                   tmp_path: Path) -> None:
    """``models:/name/version`` through MLflow loads the version's files as registered:
    replacing the logged model's files afterwards changes nothing it loads, and the kept
    files refuse writes."""
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=80, n_features=4, random_state=1)
    fitted = LogisticRegression().fit(x, y)
    mlflow.set_experiment("models-uri")
    with warnings.catch_warnings(), mlflow.start_run() as run:
        warnings.simplefilter("ignore")
        logged = mlflow.sklearn.log_model(fitted, name="model", serialization_format="skops")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "uri-churn")
    client = mlflow.tracking.MlflowClient()
    uri = client.get_model_version_download_uri("uri-churn", version.version)
    assert uri.startswith("mlflow-artifacts:/registered-models/")
    url, token, _settings = server
    with httpx.Client(base_url=f"{url}/api/2.0/mlflow-artifacts/artifacts",
                      headers={"Authorization": f"Bearer {token}"}) as http:
        # the logged model's own file replaced after registration ...
        location = client.get_logged_model(logged.model_id).artifact_location
        source = location.split(":/", 1)[1]
        assert http.put(f"{source}/model.skops", content=b"not a model").status_code == 200
        # ... and the kept files refuse any change
        kept = uri.split(":/", 1)[1]
        for r in (http.put(f"{kept}/model.skops", content=b"x"),
                  http.delete(f"{kept}/MLmodel")):
            assert r.status_code == 400 and "never change" in r.json()["message"]
    loaded = mlflow.sklearn.load_model(f"models:/uri-churn/{version.version}",
                                       dst_path=str(tmp_path))
    assert (loaded.predict(x) == fitted.predict(x)).all()  # the registered model's answers
    with pytest.raises(MlflowException) as caught:
        client.get_model_version_download_uri("uri-churn", "99")
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    # a version registered with mlharbor itself has no MLflow files, even under a name and
    # number a version registered through MLflow once had (the model deleted and made again)
    import skops.io

    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.bundles import register_model

    settings = server[2]
    reg = open_registry(settings)
    try:
        reg.delete_model("uri-churn", actor="test")
        reg.create_model("uri-churn", actor="test")
        skops.io.dump(fitted, tmp_path / "native.skops")
        register_model(reg, "uri-churn", tmp_path / "native.skops", settings=settings)
    finally:
        reg.close()
    with pytest.raises(MlflowException) as caught:
        client.get_model_version_download_uri("uri-churn", "1")
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert "mlharbor serve uri-churn:1" in caught.value.message


def test_autolog_and_the_scripts_own_model_in_one_run_register_the_latest(mlflow: Any) -> None:
    """MLflow 3 registers, of a run's logged models of one name, the one get-run lists at the
    latest step (the newest of equal steps): autolog's pickle and the script's own skops model
    share the name 'model', and the script's, logged last, is the one registered."""
    import mlflow.sklearn
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=60, n_features=4, random_state=0)
    mlflow.set_experiment("autolog-and-own-model")
    mlflow.sklearn.autolog(log_input_examples=False, log_model_signatures=False)
    try:
        with warnings.catch_warnings(), mlflow.start_run() as run:
            warnings.simplefilter("ignore")
            fitted = LogisticRegression(max_iter=200).fit(x, y)
            mlflow.sklearn.log_model(fitted, name="model", serialization_format="skops")
    finally:
        mlflow.sklearn.autolog(disable=True)
    got = mlflow.tracking.MlflowClient().get_run(run.info.run_id)
    outputs = got.outputs.model_outputs
    assert len(outputs) == 2 and {o.step for o in outputs} == {0}
    (dataset,) = got.inputs.dataset_inputs  # autolog's training data, by its digest
    assert dataset.dataset.digest and {(t.key, t.value) for t in dataset.tags} == {
        ("mlflow.data.context", "train")}
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "churn-own-model")
    assert version.source == f"models:/{outputs[1].model_id}"


def test_registry_searches_and_aliases_through_the_mlflow_client(mlflow: Any, server: Any,
                                                                 monkeypatch: Any) -> None:
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from mlharbor.bootstrap import open_identities

    x, y = make_classification(n_samples=60, n_features=4, random_state=0)
    mlflow.set_experiment("registry-reads")
    runs = []
    for c in (0.5, 1.0):
        with warnings.catch_warnings(), mlflow.start_run() as run:
            warnings.simplefilter("ignore")
            mlflow.sklearn.log_model(LogisticRegression(C=c).fit(x, y), name="model",
                                     serialization_format="skops")
        mlflow.register_model(f"runs:/{run.info.run_id}/model", "reads-churn")
        runs.append(run.info.run_id)
    client = mlflow.tracking.MlflowClient()
    # MLflow's client adds "tag.`mlflow.prompt.is_prompt` != 'true'" to every model search
    names = [m.name for m in client.search_registered_models(filter_string="name LIKE 'reads-%'")]
    assert names == ["reads-churn"]
    assert client.search_registered_models(filter_string="name = 'nope'") == []
    versions = client.search_model_versions("name = 'reads-churn'")
    assert [v.version for v in versions] == ["2", "1"]  # newest first, as MLflow
    (first,) = client.search_model_versions(f"name = 'reads-churn' AND run_id = '{runs[0]}'")
    assert first.version == "1" and first.run_id == runs[0]
    client.set_registered_model_alias("reads-churn", "champion", "1")
    assert client.get_model_version_by_alias("reads-churn", "champion").version == "1"
    assert client.get_registered_model("reads-churn").aliases == {"champion": "1"}
    client.delete_registered_model_alias("reads-churn", "champion")
    with pytest.raises(MlflowException) as caught:
        client.get_model_version_by_alias("reads-churn", "champion")
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    client.delete_registered_model_alias("reads-churn", "champion")  # none: nothing to do
    with pytest.raises(MlflowException) as caught:
        client.delete_registered_model_alias("no-such-model", "champion")
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    url, token, _settings = server
    with httpx.Client(base_url=f"{url}/api/2.0/mlflow",
                      headers={"Authorization": f"Bearer {token}"}) as http:
        for version in ("\u00b2", "9" * 5000, "9" * 20, "0", 1.5, None):
            r = http.post("registered-models/alias", json={
                "name": "reads-churn", "alias": "champion", "version": version})
            assert r.status_code == 400, (version, r.text)
            assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        r = http.get("model-versions/get", params={"name": "reads-churn", "version": "\u00b2"})
        assert r.status_code == 400 and "version" in r.json()["message"]
    with pytest.raises(MlflowException, match="filtered by name, tags"):
        client.search_registered_models(filter_string="description = 'x'")
    with pytest.raises(MlflowException, match="run_id compares with =, !="):
        client.search_model_versions("run_id LIKE 'a%'")
    # moving an alias needs alias.write, as on mlharbor's own alias route
    settings = server[2]
    from mlharbor.bootstrap import open_registry

    reg = open_registry(settings)
    try:
        ids = open_identities(reg)
        ids.create_identity("mlflow-reader", grants=["viewer"], actor="test")
        _info, viewer = ids.create_key("mlflow-reader", actor="test")
    finally:
        reg.close()
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", viewer)
    assert [v.version for v in client.search_model_versions("name = 'reads-churn'")] == [
        "2", "1"]
    for move in (lambda: client.set_registered_model_alias("reads-churn", "champion", "2"),
                 lambda: client.delete_registered_model_alias("reads-churn", "champion")):
        with pytest.raises(MlflowException) as caught:
            move()
        assert caught.value.error_code == "PERMISSION_DENIED"


def test_bad_inputs_and_outputs_are_refused_and_write_nothing(mlflow: Any, server: Any) -> None:
    mlflow.set_experiment("io-errors")
    with mlflow.start_run() as run:
        pass
    url, token, _settings = server
    good = {"model_id": "m-1", "step": "3"}
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("runs/outputs", {"models": [good, {"model_id": 5}]}, "models[1].model_id"),
        ("runs/outputs", {"models": [good, {"model_id": "m-2", "step": "late"}]},
         "models[1].step"),
        ("runs/outputs", {"models": {"model_id": "m-1"}}, "'models' must be a list"),
        ("runs/log-inputs", {"datasets": [{"tags": []}]}, "datasets[0] must hold a 'dataset'"),
        ("runs/log-inputs", {"datasets": [{"dataset": {"name": "d", "digest": "x" * 40,
                                                       "source_type": "local", "source": "s"}}]},
         "datasets[0].digest"),
        ("runs/log-inputs", {"datasets": [{"dataset": {"name": "d", "digest": "x",
                                                       "source_type": "local"}}]},
         "datasets[0].source"),
        ("runs/log-inputs", {"models": [{"model_id": ""}]}, "models[0].model_id"),
    ]
    with httpx.Client(base_url=f"{url}/api/2.0/mlflow",
                      headers={"Authorization": f"Bearer {token}"}) as http:
        for path, body, said in bad:
            r = http.post(path, json={"run_id": run.info.run_id, **body})
            assert r.status_code == 400, (path, body, r.text)
            assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
            assert said in r.json()["message"], (said, r.json()["message"])
        got = mlflow.tracking.MlflowClient().get_run(run.info.run_id)
        assert not got.outputs.model_outputs and not got.inputs.dataset_inputs
        # and the run still takes good entries
        assert http.post("runs/outputs", json={"run_id": run.info.run_id,
                                               "models": [good]}).status_code == 200
    outputs = mlflow.tracking.MlflowClient().get_run(run.info.run_id).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [("m-1", 3)]


def test_token_is_not_left_in_env() -> None:
    assert "MLFLOW_TRACKING_TOKEN" not in os.environ
