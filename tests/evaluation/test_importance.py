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


def test_a_sparse_numeric_column_gets_a_curve_over_its_whole_range() -> None:
    """95% zeros and a few hundred distinct large values (capital gains): the 5th and 95th
    percentiles are equal, where sklearn refuses to build a grid; this used to fail the whole
    training run. The curve spans the column's range instead."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    n = 3000
    gain = np.where(rng.random(n) < 0.97, 0.0, rng.integers(1, 10_000, n)).astype(float)
    X = pd.DataFrame({"gain": gain, "age": rng.integers(18, 80, n).astype(float)})
    y = (gain > 0).astype(int)
    model = RandomForestClassifier(10, random_state=0).fit(X, y)
    target = Target("classification", (0, 1), 1)
    [curve] = partial_dependence_curves(model, X, ["gain"], target, grid=5, max_rows=len(X))
    assert curve["grid"][0] == 0.0 and curve["grid"][-1] == gain.max()
    for value, average in zip(curve["grid"], curve["average"], strict=True):
        expected = model.predict_proba(X.assign(gain=value))[:, 1].mean()
        assert average == pytest.approx(expected, abs=1e-5)


def test_attributions_cover_a_holdout_with_missing_values_the_training_rows_lack() -> None:
    """The signature the report's explainer checks rows against is inferred from every row it
    sees: a text value missing only in the holdout used to void the attributions."""
    from sklearn.impute import SimpleImputer

    rng = np.random.default_rng(1)
    X = pd.DataFrame({"tenure": rng.integers(0, 72, 300).astype(float),
                      "plan": rng.choice(["a", "b", "c"], 300).astype(object)})
    y = ((X["tenure"] < 20) | (X["plan"] == "c")).astype(int).to_numpy()
    text = Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                     ("onehot", OneHotEncoder(handle_unknown="ignore"))])
    prepare = ColumnTransformer([("num", StandardScaler(), ["tenure"]),
                                 ("cat", text, ["plan"])])
    model = Pipeline([("prepare", prepare), ("model", LogisticRegression())]).fit(X, y)
    holdout = X.head(50).copy()
    holdout.loc[:4, "plan"] = None
    block = importance_report(model, holdout, Target("classification", (0, 1), 1),
                              {"tenure": 0.2, "plan": 0.1}, background=X.iloc[50:], top=1)
    assert set(block["mean_abs_attribution"] or {}) == {"tenure", "plan"}, \
        block["attribution_note"]
