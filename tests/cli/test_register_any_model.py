"""A model the user fitted themselves gets what a trained one gets, through the real CLI.

The user fits a ColumnTransformer (OneHotEncoder on a text column, imputed and scaled numbers)
with a LogisticRegression, saves it with skops and registers it WITHOUT a sample: it must
register, convert to ONNX (or say why not), and the served answers must equal the pipeline's
own ``predict``. With ``--training-data`` it gets the reference profile ``train`` stores, so
``mlharbor monitor drift`` reports on its logged predictions; ``monitor reference set``
attaches one to another version later; ``mlharbor evaluate`` scores it with the baseline.
Bad inputs get one line, a non-zero exit, and nothing written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from mlharbor.bootstrap import open_identities, open_registry
from mlharbor.settings import Settings
from tests.support import VENV_BIN, cli_env, free_port, run_cli

pytestmark = pytest.mark.slow
FEATURES = ["plan", "region", "tenure", "charges"]


def customers(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "plan": rng.choice(["basic", "plus", "pro"], n, p=[0.5, 0.3, 0.2]),
        "region": rng.choice(["north", "south", "east", "west"], n),
        "tenure": rng.integers(0, 72, n).astype(float),
        "charges": rng.normal(60, 15, n).round(2),
    })
    score = (frame["plan"] == "basic") * 1.2 - frame["tenure"] / 30 + (frame["charges"] - 60) / 20
    frame["churn"] = (score + rng.normal(0, 0.4, n) > 0).astype(int)
    frame.loc[rng.choice(n, n // 20, replace=False), "charges"] = np.nan  # imputed
    return frame


def fitted_pipeline(train: pd.DataFrame) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prepare = ColumnTransformer([
        ("text", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"]),
        ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
         ["tenure", "charges"]),
    ])
    return Pipeline([("prepare", prepare), ("model", LogisticRegression(max_iter=500))]).fit(
        train[FEATURES], train["churn"])


@pytest.fixture
def user_files(tmp_path: Path) -> dict[str, Any]:
    """What a user has: a fitted pipeline saved with skops, the training CSV, fresh data."""
    import skops.io as sio

    train, fresh = customers(600, seed=1), customers(300, seed=2)
    pipeline = fitted_pipeline(train)
    sio.dump(pipeline, tmp_path / "churn.skops")
    train.to_csv(tmp_path / "train.csv", index=False)
    fresh.to_csv(tmp_path / "fresh.csv", index=False)
    return {"pipeline": pipeline, "train": train, "fresh": fresh, "dir": tmp_path}


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def serve(settings: Settings) -> Iterator[Any]:
    """Start ``mlharbor serve REF`` as a user would, with an admin key; stopped at the end."""
    registry = open_registry(settings)
    key = open_identities(registry).init_admin("ops", actor="test")[1]
    registry.close()
    procs: list[subprocess.Popen[bytes]] = []

    def start(ref: str) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
        port = free_port()
        env = {**os.environ, **cli_env(settings),
               "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0"}
        proc = subprocess.Popen([str(VENV_BIN / "mlharbor"), "serve", ref, "--port", str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    return proc, url, {"Authorization": f"Bearer {key}"}
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("mlharbor serve did not become ready")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_fitted_pipeline_registers_serves_drifts_and_evaluates(
    settings: Settings, user_files: dict[str, Any], serve: Any
) -> None:
    folder, pipeline, fresh = user_files["dir"], user_files["pipeline"], user_files["fresh"]
    env = cli_env(settings)

    # 1. Register without --sample, with --training-data: signature from the fitted pipeline.
    result = run_cli("models", "register", "churn", str(folder / "churn.skops"),
                     "--training-data", str(folder / "train.csv"), "--json", env=env)
    assert result.returncode == 0, result.stderr
    registered = json.loads(result.stdout)
    parity = registered["parity"]
    assert parity["status"] == "passed", parity  # converted, and ONNX answers like sklearn
    assert registered["runtime"] == "onnx"
    assert "left out: churn" in registered["reference"]
    signature = registered["version"]["manifest"]["signature"]
    assert [c["name"] for c in signature["inputs"]] == FEATURES
    by_name = {c["name"]: c for c in signature["inputs"]}
    assert by_name["plan"]["dtype"] == "string"
    assert by_name["plan"]["categories"] == ["basic", "plus", "pro"]
    assert by_name["charges"]["dtype"] == "float64" and by_name["charges"]["nullable"]

    # 2. Served answers equal the pipeline's own predict, through a live server.
    proc, url, headers = serve("churn:1")
    rows = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in fresh[FEATURES].to_dict(orient="records")]
    served: list[Any] = []
    for start in range(0, len(rows), 50):
        answer = httpx.post(f"{url}/v1/endpoints/churn/predict", json=rows[start:start + 50],
                            headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        served += answer.json()["predictions"]
    assert served == pipeline.predict(fresh[FEATURES]).tolist()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0

    # 3. Drift on the logged predictions, against the profile stored at registration.
    report_file = folder / "drift.json"
    drift = run_cli("monitor", "drift", "churn", "--window", "1h", "--json", str(report_file),
                    env=env)
    assert drift.returncode == 0, drift.stderr
    report = json.loads(report_file.read_text())
    assert report["version"] == 1 and report["window"]["rows"] == len(rows)
    assert {f["name"] for f in report["features"]} == set(FEATURES)

    # 4. Evaluate the registered model on labelled data: metrics, the baseline, valid JSON.
    scored = run_cli("evaluate", "churn:1", "--data", str(folder / "fresh.csv"),
                     "--target", "churn", env=env)
    assert scored.returncode == 0, scored.stderr
    assert "accuracy" in scored.stdout and "baseline (majority)" in scored.stdout
    as_json = run_cli("evaluate", "churn:1", "--data", str(folder / "fresh.csv"),
                      "--target", "churn", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    from sklearn.metrics import accuracy_score

    expected = accuracy_score(fresh["churn"], pipeline.predict(fresh[FEATURES]))
    assert body["holdout"]["metrics"]["accuracy"] == pytest.approx(expected)
    majority = max(fresh["churn"].mean(), 1 - fresh["churn"].mean())
    assert body["baseline"]["holdout"]["metrics"]["accuracy"] == pytest.approx(majority)
    assert body["task"] == "classification" and body["rows"] == len(fresh)


def test_reference_set_later_on_another_version(
    settings: Settings, user_files: dict[str, Any]
) -> None:
    from mlharbor.core.errors import NotFoundError
    from mlharbor.data.profile import build_profile
    from mlharbor.data.schema import infer_schema
    from mlharbor.monitoring.service import Monitor

    folder, train = user_files["dir"], user_files["train"]
    env = cli_env(settings)
    for args in (["--training-data", str(folder / "train.csv")], []):
        done = run_cli("models", "register", "churn", str(folder / "churn.skops"), *args,
                       env=env)
        assert done.returncode == 0, done.stderr
    assert "reference: none" in done.stdout and "monitor reference set churn:2" in done.stdout
    registry = open_registry(settings)
    try:
        with pytest.raises(NotFoundError, match="no reference profile"):
            Monitor(settings, registry).drift_engine("churn", 2)
    finally:
        registry.close()

    attached = run_cli("monitor", "reference", "set", "churn:2", "--data",
                       str(folder / "train.csv"), "--target", "churn", env=env)
    assert attached.returncode == 0, attached.stderr
    assert "churn:2: reference profile of 600 rows over 4 column(s)" in attached.stdout
    registry = open_registry(settings)
    try:
        first = registry.get_version("churn:1").lineage["reference_profile"]
        second = registry.get_version("churn:2").lineage["reference_profile"]
        # The same profile `mlharbor train` builds from the same rows (schema kinds included).
        schema = infer_schema(train, "churn")
        assert second == first == build_profile(train[FEATURES], schema.features)
        Monitor(settings, registry).drift_engine("churn", 2)  # drift can now be measured
        events = [e for e in registry.store.iter_audit() if e.action == "version.update"]
        assert events and events[-1].resource == "model/churn/version/2"
        assert events[-1].details.get("lineage") == ["reference_profile"]
    finally:
        registry.close()


def test_bad_inputs_get_one_line_and_change_nothing(
    settings: Settings, user_files: dict[str, Any]
) -> None:
    folder, train = user_files["dir"], user_files["train"]
    env = cli_env(settings)
    done = run_cli("models", "register", "churn", str(folder / "churn.skops"), env=env)
    assert done.returncode == 0, done.stderr
    train.drop(columns=["charges"]).to_csv(folder / "no_charges.csv", index=False)
    train.assign(account_id=range(len(train))).to_csv(folder / "with_ids.csv", index=False)
    train.drop(columns=["churn"]).to_csv(folder / "unlabelled.csv", index=False)
    (folder / "garbage.parquet").write_bytes(b"\x00not a parquet file at all")
    report = folder / "report.html"

    def unchanged() -> None:
        registry = open_registry(settings)
        try:
            assert "reference_profile" not in registry.get_version("churn:1").lineage
            assert registry.get_version("churn").version == 1  # no version was added
        finally:
            registry.close()
        assert not report.exists()

    cases = {
        "missing target": (["evaluate", "churn:1", "--data", str(folder / "unlabelled.csv"),
                            "--target", "churn", "--report", str(report)], "'churn'"),
        "no target named": (["evaluate", "churn:1", "--data", str(folder / "train.csv"),
                             "--report", str(report)], "--target"),
        "evaluate, missing input": (["evaluate", "churn:1", "--data",
                                     str(folder / "no_charges.csv"), "--target", "churn",
                                     "--report", str(report)], "'charges'"),
        "evaluate, unreadable": (["evaluate", "churn:1", "--data",
                                  str(folder / "garbage.parquet"), "--target", "churn",
                                  "--report", str(report)], "garbage.parquet"),
        "reference, missing column": (["monitor", "reference", "set", "churn:1", "--data",
                                       str(folder / "no_charges.csv"), "--target", "churn"],
                                      "'charges'"),
        "reference, extra column": (["monitor", "reference", "set", "churn:1", "--data",
                                     str(folder / "with_ids.csv"), "--target", "churn"],
                                    "'account_id'"),
        "reference, unreadable": (["monitor", "reference", "set", "churn:1", "--data",
                                   str(folder / "garbage.parquet")], "garbage.parquet"),
        "reference, no such file": (["monitor", "reference", "set", "churn:1", "--data",
                                     str(folder / "nope.csv")], "nope.csv"),
        "register, missing column": (["models", "register", "churn",
                                      str(folder / "churn.skops"), "--training-data",
                                      str(folder / "no_charges.csv")], "'charges'"),
    }
    for name, (args, named) in cases.items():
        line = _one_line_error(run_cli(*args, env=env))
        assert named in line, (name, line)
        unchanged()


def test_python_api_register_with_training_data_and_set_reference(
    settings: Settings, user_files: dict[str, Any]
) -> None:
    """The same through the Python API: register_model(training_data=...), set_reference,
    evaluate; each accepts what the API itself returns."""
    from mlharbor.core.errors import SchemaError
    from mlharbor.pipelines.evaluate_job import evaluate
    from mlharbor.registry.bundles import register_model, set_reference

    pipeline, train = user_files["pipeline"], user_files["train"]
    registry = open_registry(settings)
    try:
        first = register_model(registry, "churn", pipeline, settings=settings,
                               training_data=train)
        profile = first.version.lineage["reference_profile"]
        assert set(profile["features"]) == set(FEATURES) and profile["rows"] == len(train)
        assert first.reference is not None and "left out: churn" in first.reference
        second = register_model(registry, "churn", pipeline, settings=settings)
        assert "reference_profile" not in second.version.lineage and second.reference is None
        with pytest.raises(SchemaError, match="'churn' the model does not take"):
            set_reference(registry, second, train)  # the label must be named
        assert "reference_profile" not in registry.get_version(second).lineage
        updated = set_reference(registry, second, train, target="churn", actor="alice")
        assert updated.lineage["reference_profile"] == profile
        scored = evaluate(registry, second, str(user_files["dir"] / "fresh.csv"),
                          settings=settings, target="churn", resamples=50)
        assert scored.ref == "churn:2" and scored.report["baseline"]["strategy"] == "majority"
    finally:
        registry.close()
