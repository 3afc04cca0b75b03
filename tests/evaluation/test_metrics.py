"""Our metrics equal scikit-learn's own functions on the same predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler, label_binarize

import mlharbor
from mlharbor.evaluation.bootstrap import fast_metrics
from mlharbor.evaluation.metrics import Target, compute_metrics, confusion, predictions

CHURN = Path(mlharbor.__file__).parent / "demo" / "churn.csv"


def _churn_predictions() -> tuple[Any, Any, Any, Target]:
    """A categorical dataset: the demo churn table through one-hot encoding."""
    frame = pd.read_csv(CHURN).sample(2000, random_state=0)
    X = frame.drop(columns=["churn", "customer_id"])
    y = frame["churn"].to_numpy()
    cats = ["contract", "internet", "payment_method"]
    nums = [c for c in X.columns if c not in cats]
    prep = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), nums),
        ("cat", OneHotEncoder(handle_unknown="ignore"), cats),
    ])
    model = make_pipeline(prep, LogisticRegression(max_iter=500))
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    model.fit(X_tr, y_tr)
    target = Target("classification", (0, 1), 1)
    y_pred, proba = predictions(model, X_te, target)
    return y_te, y_pred, proba, target


def _cancer_predictions() -> tuple[Any, Any, Any, Target]:
    """Numeric features, string labels: the positive class is 'malignant'."""
    data = load_breast_cancer()
    names = np.array(["malignant", "benign"])[data.target]
    X_tr, X_te, y_tr, y_te = train_test_split(data.data, names, test_size=0.3, random_state=1)
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(X_tr, y_tr)
    target = Target("classification", ("benign", "malignant"), "malignant")
    y_pred, proba = predictions(model, X_te, target)
    return y_te, y_pred, proba, target


def _iris_predictions() -> tuple[Any, Any, Any, Target]:
    data = load_iris()
    X_tr, X_te, y_tr, y_te = train_test_split(data.data, data.target, test_size=0.4,
                                              random_state=2)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05)).fit(X_tr, y_tr)
    target = Target("classification", (0, 1, 2), None)
    y_pred, proba = predictions(model, X_te, target)
    return y_te, y_pred, proba, target


BINARY = [_churn_predictions, _cancer_predictions]


@pytest.mark.parametrize("make", BINARY, ids=["churn-categorical", "cancer-string-labels"])
def test_binary_metrics_equal_sklearn(make: Any) -> None:
    y, y_pred, proba, target = make()
    pos = list(target.classes).index(target.pos_label)
    labels = list(target.classes)
    expected = {
        "accuracy": skm.accuracy_score(y, y_pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, y_pred),
        "precision": skm.precision_score(y, y_pred, pos_label=target.pos_label),
        "recall": skm.recall_score(y, y_pred, pos_label=target.pos_label),
        "f1": skm.f1_score(y, y_pred, pos_label=target.pos_label),
        "f1_macro": skm.f1_score(y, y_pred, average="macro"),
        "f1_weighted": skm.f1_score(y, y_pred, average="weighted"),
        "precision_macro": skm.precision_score(y, y_pred, average="macro"),
        "recall_weighted": skm.recall_score(y, y_pred, average="weighted"),
        "roc_auc": skm.roc_auc_score(y == target.pos_label, proba[:, pos]),
        "pr_auc": skm.average_precision_score(y == target.pos_label, proba[:, pos]),
        "log_loss": skm.log_loss(y, proba, labels=labels),
    }
    ours = compute_metrics(y, y_pred, proba, target)
    fast = fast_metrics(y, y_pred, proba, target)
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
        assert fast[name] == pytest.approx(value, abs=1e-9), name
    assert confusion(y, y_pred, target) == skm.confusion_matrix(y, y_pred, labels=labels).tolist()


def test_multiclass_metrics_equal_sklearn() -> None:
    y, y_pred, proba, target = _iris_predictions()
    ours = compute_metrics(y, y_pred, proba, target)
    fast = fast_metrics(y, y_pred, proba, target)
    assert ours["f1"] == pytest.approx(skm.f1_score(y, y_pred, average="macro"))
    assert ours["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, proba, multi_class="ovr", labels=[0, 1, 2]))
    assert ours["pr_auc"] == pytest.approx(skm.average_precision_score(
        label_binarize(y, classes=[0, 1, 2]), proba, average="macro"))
    for name in ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted",
                 "precision_weighted", "recall_macro", "log_loss"):
        assert fast[name] == pytest.approx(ours[name], abs=1e-9), name


def test_regression_metrics_equal_sklearn() -> None:
    X, y = load_diabetes(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, random_state=0)
    y_pred = Ridge().fit(X_tr, y_tr).predict(X_te)
    target = Target("regression")
    expected = {
        "mae": skm.mean_absolute_error(y_te, y_pred),
        "rmse": skm.root_mean_squared_error(y_te, y_pred),
        "r2": skm.r2_score(y_te, y_pred),
        "mape": skm.mean_absolute_percentage_error(y_te, y_pred),
    }
    for impl in (compute_metrics(y_te, y_pred, None, target),
                 fast_metrics(y_te, y_pred, None, target)):
        for name, value in expected.items():
            assert impl[name] == pytest.approx(value, rel=1e-12), name
