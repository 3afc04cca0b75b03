"""`mlharbor train --backend dask --scheduler ...` as a user runs it (a subprocess) against a
real two-worker Dask cluster, and its clear one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import mlharbor
from mlharbor.settings import Settings
from tests.support import cli_env, free_port, run_cli

pytestmark = pytest.mark.xdist_group("dask")

CHURN = Path(mlharbor.__file__).parent / "demo" / "churn.csv"

RECIPE = """\
data: {path: churn.csv, target: churn, id_columns: [customer_id]}
candidates:
  - name: forest
    estimator: sklearn.ensemble.RandomForestClassifier
    params: {n_estimators: 10}
    search: {method: grid, space: {max_depth: [3, 6]}}
validation: {holdout: 0.25, folds: 3, seed: 5, bootstrap: 50}
metrics: {primary: f1}
register: {name: churn, alias: champion}
"""


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_train_on_dask_from_the_cli(settings: Settings, tmp_path: Path,
                                    dask_scheduler: str) -> None:
    env = cli_env(settings)
    pd.read_csv(CHURN).head(600).to_csv(tmp_path / "churn.csv", index=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)

    local = run_cli("train", str(recipe), "--json", env={**env, "MLHARBOR_TRAINING__N_JOBS": "1"})
    assert local.returncode == 0, local.stderr
    remote = run_cli("train", str(recipe), "--json", "--backend", "dask", "--scheduler",
                     dask_scheduler, env=env)
    assert remote.returncode == 0, remote.stderr
    assert f"Fitting on the Dask cluster at {dask_scheduler} (2 worker" in remote.stderr
    first, second = json.loads(local.stdout), json.loads(remote.stdout)
    assert (first["version"], second["version"]) == ("churn:1", "churn:2")
    assert second["metrics"] == first["metrics"] and second["winner"] == first["winner"]


def test_cli_errors_are_one_clear_line(settings: Settings, tmp_path: Path) -> None:
    env = cli_env(settings)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)  # no churn.csv: every error below comes before reading data

    bad = run_cli("train", str(recipe), "--backend", "spark", env=env)
    assert bad.returncode == 2
    assert "unknown compute engine 'spark'; known engines are local, dask" in _one_error_line(
        bad.stderr)

    # The settings choose dask when the recipe and the flags say nothing.
    missing = run_cli("train", str(recipe), env={**env, "MLHARBOR_TRAINING__BACKEND": "dask"})
    assert missing.returncode == 2
    assert "needs the address of a running Dask scheduler" in _one_error_line(missing.stderr)

    address = f"tcp://127.0.0.1:{free_port()}"
    down = run_cli("train", str(recipe), "--scheduler", address, env=env)
    assert down.returncode == 8  # UnavailableError
    assert f"cannot reach the Dask scheduler at {address}" in _one_error_line(down.stderr)

    (tmp_path / "bad.yaml").write_text(RECIPE + "training: {backend: sparkle}\n")
    wrong = run_cli("train", str(tmp_path / "bad.yaml"), env=env)
    assert wrong.returncode == 2
    assert "bad.yaml line 10, training.backend: Input should be 'local' or 'dask'" in (
        _one_error_line(wrong.stderr))
