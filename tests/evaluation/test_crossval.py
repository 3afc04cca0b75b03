"""Fold results equal scikit-learn's cross_validate on the same folds; paired tests behave."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_validate

from mlharbor.evaluation.bootstrap import (
    bootstrap_draws,
    intervals,
    paired_difference,
    resample_indices,
)
from mlharbor.evaluation.crossval import (
    best_key,
    cross_validate_many,
    paired_fold_test,
    score_fixed_model,
)
from mlharbor.evaluation.metrics import Target, compute_metrics


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    data = load_breast_cancer(as_frame=True)
    X, y = data.data, data.target.to_numpy()
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    return X, y, folds


def test_fold_metrics_equal_cross_validate(cancer) -> None:  # type: ignore[no-untyped-def]
    X, y, folds = cancer
    model = RandomForestClassifier(n_estimators=15, random_state=0)
    target = Target("classification", (0, 1), 1)
    seen: list[str] = []
    ours = cross_validate_many([("rf", model), ("dummy", DummyClassifier())], X, y, folds,
                               target, n_jobs=2, on_fold=lambda key, _: seen.append(key))
    theirs = cross_validate(model, X, y, cv=folds, n_jobs=2,
                            scoring=["f1", "roc_auc", "accuracy", "neg_log_loss"])
    assert ours["rf"].values("f1") == pytest.approx(list(theirs["test_f1"]), abs=1e-12)
    assert ours["rf"].values("roc_auc") == pytest.approx(list(theirs["test_roc_auc"]))
    assert ours["rf"].values("accuracy") == pytest.approx(list(theirs["test_accuracy"]))
    assert ours["rf"].values("log_loss") == pytest.approx(
        [-v for v in theirs["test_neg_log_loss"]])
    assert sorted(seen) == ["dummy"] * 3 + ["rf"] * 3
    assert ours["rf"].std("f1") >= 0
    assert best_key(ours, "f1") == "rf"
    assert best_key(ours, "log_loss") == "rf"  # lower is better


def test_fixed_model_and_paired_tests(cancer) -> None:  # type: ignore[no-untyped-def]
    X, y, folds = cancer
    target = Target("classification", (0, 1), 1)
    fitted = RandomForestClassifier(n_estimators=15, random_state=0).fit(X, y)
    fixed = score_fixed_model(fitted, X, y, folds, target, "champion")
    for (_, test), scores in zip(folds, fixed.folds, strict=True):
        pred = fitted.predict(X.iloc[test])
        proba = fitted.predict_proba(X.iloc[test])
        assert scores.metrics["f1"] == pytest.approx(
            compute_metrics(y[test], pred, proba, target)["f1"])
    cv = cross_validate_many([("dummy", DummyClassifier())], X, y, folds, target, n_jobs=1)
    test = paired_fold_test(fixed, cv["dummy"], "f1", 1 / 3)
    assert test["difference"] > 0.15 and test["p_value"] < 0.05
    same = paired_fold_test(fixed, fixed, "f1", 1 / 3)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def test_bootstrap_intervals_and_paired_difference() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    good = np.where(rng.random(600) < 0.9, y, 1 - y)
    coin = rng.integers(0, 2, 600)
    target = Target("classification", (0, 1), 1)
    indices = resample_indices(600, 300, seed=1)
    draws_good = bootstrap_draws(y, good, None, target, indices)
    draws_coin = bootstrap_draws(y, coin, None, target, indices)
    ci = intervals(draws_good, 300)
    accuracy = compute_metrics(y, good, None, target)["accuracy"]
    assert ci["accuracy"][0] < accuracy < ci["accuracy"][1]
    assert ci["accuracy"][0] > 0.85 and ci["accuracy"][1] < 0.95
    full = (compute_metrics(y, good, None, target), compute_metrics(y, coin, None, target))
    diff = paired_difference("f1", full, (draws_good, draws_coin))
    assert diff["significantly_better"] and diff["p_value"] < 0.01
    assert diff["ci"][0] < diff["difference"] < diff["ci"][1]
    again = bootstrap_draws(y, good, None, target, resample_indices(600, 300, seed=1))
    assert np.array_equal(again["f1"], draws_good["f1"])
