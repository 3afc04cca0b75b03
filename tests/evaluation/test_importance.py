"""Partial dependence equals its definition (the mean output with the column set to each grid
value for every row), for numeric and text columns and either positive class; the top
features; mean |attribution| through explain for a linear model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlharbor.evaluation.importance import (
    importance_report,
    partial_dependence_curves,
    top_features,
)
from mlharbor.evaluation.metrics import Target


@pytest.fixture(scope="module")
def fitted() -> tuple[Pipeline, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"tenure": rng.integers(0, 72, 400),
                      "plan": rng.choice(["a", "b", "c"], 400)})
    y = ((X["tenure"] < 20) | (X["plan"] == "c")).astype(int).to_numpy()
    prepare = ColumnTransformer([("num", StandardScaler(), ["tenure"]),
                                 ("cat", OneHotEncoder(), ["plan"])])
    model = Pipeline([("prepare", prepare), ("model", LogisticRegression())]).fit(X, y)
    return model, X, y


@pytest.mark.parametrize("positive", [1, 0])
def test_partial_dependence_is_the_mean_output_over_the_rows(fitted, positive) -> None:  # type: ignore[no-untyped-def]
    model, X, _ = fitted
    target = Target("classification", (0, 1), positive)
    curves = {c["feature"]: c for c in partial_dependence_curves(model, X, ["tenure", "plan"],
                                                                 target, grid=5)}
    assert curves["plan"]["kind"] == "categorical" and curves["plan"]["grid"] == ["a", "b", "c"]
    assert curves["tenure"]["kind"] == "numeric" and len(curves["tenure"]["grid"]) == 5
    for feature, curve in curves.items():
        for value, average in zip(curve["grid"], curve["average"], strict=True):
            changed = X.assign(**{feature: value})
            expected = model.predict_proba(changed)[:, positive].mean()
            assert average == pytest.approx(expected, abs=1e-5)


def test_top_features_and_the_report_block(fitted) -> None:  # type: ignore[no-untyped-def]
    model, X, _ = fitted
    assert top_features({"a": 0.1, "b": float("nan"), "c": 0.3, "d": 0.1}, 3) == ["c", "a", "d"]
    block = importance_report(model, X, Target("classification", (0, 1), 1),
                              {"tenure": 0.2, "plan": 0.1}, background=X, top=1)
    assert block["top_features"] == ["tenure"]
    assert [c["feature"] for c in block["partial_dependence"]] == ["tenure"]
    assert set(block["mean_abs_attribution"]) == {"tenure", "plan"}
    assert block["attribution_note"].startswith("linear on 400 holdout rows")
