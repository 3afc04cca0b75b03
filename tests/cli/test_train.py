"""`mlharbor train / evaluate / reproduce` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import mlharbor
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from tests.support import cli_env, run_cli

CHURN = Path(mlharbor.__file__).parent / "demo" / "churn.csv"

RECIPE = """\
data: {path: churn.csv, target: churn, id_columns: [customer_id]}
candidates:
  - name: forest
    estimator: sklearn.ensemble.RandomForestClassifier
    params: {n_estimators: 15, max_depth: 6}
validation: {holdout: 0.25, folds: 3, seed: 3, bootstrap: 100}
metrics: {primary: f1}
gates: ["f1 >= GATE", "better than baseline"]
register: {name: churn, alias: champion}
"""


def test_train_evaluate_reproduce_and_gate_failure(settings: Settings, tmp_path: Path) -> None:
    env = {**cli_env(settings), "MLHARBOR_TRAINING__N_JOBS": "1"}
    pd.read_csv(CHURN).head(1200).to_csv(tmp_path / "churn.csv", index=False)
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("GATE", "0.3"))
    (tmp_path / "strict.yaml").write_text(RECIPE.replace("GATE", "0.99"))
    (tmp_path / "bad.yaml").write_text(
        RECIPE.replace("GATE", "0.3").replace("target: churn", "target: churned"))

    trained = run_cli("train", str(tmp_path / "recipe.yaml"), "--report",
                      str(tmp_path / "report.html"), env=env)
    assert trained.returncode == 0, trained.stderr
    assert "Registered churn:1 (ready), alias 'champion' now points to it" in trained.stdout
    assert "Candidates" in trained.stdout and "Gates" in trained.stdout
    assert "<svg" in (tmp_path / "report.html").read_text()

    failed = run_cli("train", str(tmp_path / "strict.yaml"), env=env)
    assert failed.returncode == 1
    assert "gate 'f1 >= 0.99' failed" in failed.stderr
    assert "no alias moved" in failed.stderr

    bad = run_cli("train", str(tmp_path / "bad.yaml"), env=env)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "line 1, data.target: unknown column 'churned'" in errors[0]
    assert "Traceback" not in bad.stderr

    registry = Registry.from_settings(settings)
    try:
        assert registry.get_version("churn@champion").version == 1
        assert registry.get_version("churn:2").status == "failed"
        assert registry.get_model("churn").latest_version in (1, 2)
        assert len(registry.list_versions("churn").items) == 2  # the bad recipe added none
    finally:
        registry.close()

    evaluated = run_cli("evaluate", "churn@champion", "--data", str(tmp_path / "churn.csv"),
                        "--json", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    body = json.loads(evaluated.stdout)
    assert body["version"] == "churn:1" and 0 < body["holdout"]["metrics"]["f1"] <= 1
    assert body["holdout"]["ci95"]["f1"][0] <= body["holdout"]["metrics"]["f1"]

    again = run_cli("reproduce", "churn:1", env=env)
    assert again.returncode == 0, again.stderr
    assert "churn:1 reproduced: all" in again.stdout
