"""A small slice of the demo churn data and a fast recipe over it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import mlharbor

CHURN = Path(mlharbor.__file__).parent / "demo" / "churn.csv"

RECIPE = """\
data:
  path: churn.csv
  target: churn
  id_columns: [customer_id]
candidates:
  - name: logistic
    estimator: sklearn.linear_model.LogisticRegression
    params: {max_iter: 300}
  - name: forest
    estimator: sklearn.ensemble.RandomForestClassifier
    params: {n_estimators: 15, min_samples_leaf: 5}
    search:
      method: grid
      space: {max_depth: [4, 8]}
validation: {holdout: 0.25, folds: 3, seed: 7, bootstrap: 100}
metrics: {primary: f1}
gates:
  - f1 >= 0.4
  - better than baseline
  - not worse than champion by more than 0.01
register: {name: churn, alias: champion}
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    pd.read_csv(CHURN).head(1500).to_csv(tmp_path / "churn.csv", index=False)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    return tmp_path
