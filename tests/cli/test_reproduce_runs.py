"""`mlharbor reproduce` is a run too (issue 16), as a user runs it (subprocesses): after
`mlharbor train`, the reproduction of churn:1 is a run in the experiment ``churn`` of kind
``reproduction`` with its candidate child, tagged with the version it reproduces and the
verdict; the version keeps naming the run that trained it, and that run alone names the
version. A reproduction refused before training records nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import mlharbor
from mlharbor.core.runs import RunStatus
from mlharbor.settings import Settings
from tests.support import cli_env, run_cli

CHURN = Path(mlharbor.__file__).parent / "demo" / "churn.csv"
RECIPE = """\
data: {path: churn.csv, target: churn, id_columns: [customer_id]}
candidates:
  - name: logistic
    estimator: sklearn.linear_model.LogisticRegression
    params: {max_iter: 300}
validation: {holdout: 0.25, folds: 2, seed: 3, bootstrap: 20}
metrics: {primary: f1}
gates: ["better than baseline"]
register: {name: churn, alias: champion}
"""


def _runs(env: dict[str, str]) -> list[dict[str, object]]:
    listed = run_cli("runs", "list", "-e", "churn", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    runs: list[dict[str, object]] = json.loads(listed.stdout)["runs"]
    return runs


def test_a_reproduction_is_a_run_tagged_with_the_version(settings: Settings,
                                                         tmp_path: Path) -> None:
    from mlharbor.bootstrap import open_registry
    from mlharbor.tracking.store import TrackingStore

    env = {**cli_env(settings), "MLHARBOR_TRAINING__N_JOBS": "1"}
    pd.read_csv(CHURN).head(600).to_csv(tmp_path / "churn.csv", index=False)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    trained = run_cli("train", str(tmp_path / "recipe.yaml"), "--json", env=env)
    assert trained.returncode == 0, trained.stderr
    train_run = json.loads(trained.stdout)["run_id"]

    again = run_cli("reproduce", "churn@champion", "--json", env=env)
    assert again.returncode == 0, again.stderr
    body = json.loads(again.stdout)
    assert body["matches"] is True and body["ref"] == "churn:1"
    run_id = body["run_id"]
    assert run_id and run_id != train_run

    registry = open_registry(settings)
    try:
        store = TrackingStore(registry.store.db)
        run = store.get_run(run_id)
        assert store.get_experiment(run.experiment_id).name == "churn"
        assert run.name == "reproduce churn:1" and run.status is RunStatus.FINISHED
        assert run.tags["mlharbor.reproduces"] == "churn:1"
        assert run.tags["mlharbor.kind"] == "reproduction"
        assert run.tags["mlharbor.reproduction.matches"] == "true"
        assert run.tags["mlharbor.reproduction.same_data"] == "true"
        assert "mlharbor.model_version" not in run.tags  # it registered nothing
        version = registry.get_version("churn:1")
        assert run.metrics["f1"].value == version.metrics["f1"]
        assert [(c.name, c.status) for c in store.child_runs(run_id)] == [
            ("logistic", RunStatus.FINISHED)]
        # The version still names the run that trained it, and that run the version.
        assert version.tags["mlharbor.run_id"] == train_run
        assert store.get_run(train_run).tags["mlharbor.model_version"] == "churn:1"
        assert run.tags["mlharbor.dataset.fingerprint"] == \
            store.get_run(train_run).tags["mlharbor.dataset.fingerprint"]
    finally:
        registry.close()

    before = _runs(env)
    table = run_cli("reproduce", "churn:1", "--experiment", "checks", env=env)
    assert table.returncode == 0, table.stderr
    assert "Run: " in table.stdout and "churn:1 reproduced: all" in table.stdout
    missing = run_cli("reproduce", "churn:9", "--json", env=env)
    assert missing.returncode == 3 and "has no version 9" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert _runs(env) == before  # the refused one recorded nothing, --experiment elsewhere
    listed = run_cli("runs", "list", "-e", "checks", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert sorted(r["name"] for r in json.loads(listed.stdout)["runs"]) == [
        "logistic", "reproduce churn:1"]
