"""Cross-validation on an engine (a real two-worker Dask cluster, and the local thread engine)
gives exactly the fold metrics of the local joblib run, folds in order, every fold reported."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from mlharbor.compute import Engine, open_engine
from mlharbor.evaluation.crossval import cross_validate_many
from mlharbor.evaluation.metrics import Target

pytestmark = pytest.mark.xdist_group("dask")

Data = tuple[pd.DataFrame, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]
TARGET = Target("classification", (0, 1), 1)


@pytest.fixture(scope="module")
def cancer() -> Data:
    data = load_breast_cancer(as_frame=True)
    X, y = data.data, data.target.to_numpy()
    folds = list(StratifiedKFold(3, shuffle=True, random_state=1).split(X, y))
    return X, y, folds


@pytest.fixture(params=["local", "dask"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    if request.param == "local":
        with open_engine("local", workers=2) as local:
            yield local
    else:
        with open_engine("dask", scheduler=request.getfixturevalue("dask_scheduler")) as remote:
            yield remote


def _models() -> list[tuple[str, Any]]:
    return [
        *[(f"rf#{i}", RandomForestClassifier(n_estimators=8, max_depth=d, random_state=7))
          for i, d in enumerate((2, 4, None))],
        ("lr", LogisticRegression(max_iter=50)),  # warns (no convergence): warnings travel
        ("dummy", DummyClassifier(strategy="stratified", random_state=3)),
    ]


def test_engine_metrics_equal_local_joblib(cancer: Data, engine: Engine) -> None:
    X, y, folds = cancer
    local = cross_validate_many(_models(), X, y, folds, TARGET, n_jobs=1)
    seen: list[tuple[str, int]] = []
    remote = cross_validate_many(_models(), X, y, folds, TARGET, engine=engine,
                                 on_fold=lambda key, s: seen.append((key, s.fold)))
    assert list(remote) == list(local)
    for key, result in local.items():
        assert [f.fold for f in remote[key].folds] == [0, 1, 2]
        assert [f.metrics for f in remote[key].folds] == [f.metrics for f in result.folds], key
    assert sorted(seen) == sorted((key, i) for key, _ in _models() for i in range(3))
    lr_warnings = {w.category for f in remote["lr"].folds for w in f.warnings}
    assert lr_warnings == {w.category for f in local["lr"].folds for w in f.warnings}
    assert "ConvergenceWarning" in lr_warnings


def test_a_failing_fit_on_the_cluster_raises_its_own_error(
    cancer: Data, dask_scheduler: str
) -> None:
    X, y, folds = cancer
    broken = RandomForestClassifier(n_estimators=-3)  # scikit-learn checks params in fit
    with open_engine("dask", scheduler=dask_scheduler) as engine, pytest.raises(
            ValueError, match="n_estimators"):
        cross_validate_many([("broken", broken)], X, y, folds, TARGET, engine=engine)
