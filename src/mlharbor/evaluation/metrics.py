"""Metric vocabulary and computation, delegating to scikit-learn's own functions.

Names follow scikit-learn's convention: errors and losses (``mae``, ``rmse``, ``mape``,
``log_loss``) are minimised, everything else maximised. Binary metrics count ``pos_label`` as
positive; for more than two classes ``f1``/``precision``/``recall`` mean their macro average.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from mlharbor.core.errors import ConfigError

CLASSIFICATION_METRICS: tuple[str, ...] = (
    "accuracy", "balanced_accuracy",
    "precision", "recall", "f1",
    "precision_macro", "recall_macro", "f1_macro",
    "precision_weighted", "recall_weighted", "f1_weighted",
    "roc_auc", "pr_auc", "log_loss",
)
REGRESSION_METRICS: tuple[str, ...] = ("mae", "rmse", "r2", "mape")
LOWER_IS_BETTER = frozenset({"mae", "rmse", "mape", "log_loss"})
PROBABILITY_METRICS = frozenset({"roc_auc", "pr_auc", "log_loss"})


def metric_names(task: str) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def default_primary(task: str, n_classes: int) -> str:
    if task == "regression":
        return "rmse"
    return "f1" if n_classes == 2 else "f1_macro"


def check_metric(metric: str, task: str) -> str:
    names = metric_names(task)
    if metric not in names:
        raise ConfigError(
            f"Unknown {task} metric {metric!r}; expected one of {', '.join(names)}.",
            field="metric",
        )
    return metric


@dataclasses.dataclass(frozen=True)
class Target:
    """What the metrics need to know about the labels."""

    task: str
    classes: tuple[Any, ...] = ()
    pos_label: Any = None

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2


def predictions(model: Any, X: Any, target: Target) -> tuple[Any, Any | None]:
    """``(y_pred, proba)``; proba columns follow ``target.classes`` (None if unavailable)."""
    import numpy as np

    y_pred = np.asarray(model.predict(X))
    if target.task != "classification" or not hasattr(model, "predict_proba"):
        return y_pred, None
    raw = np.asarray(model.predict_proba(X), dtype=float)
    # scikit-learn names the column order ``classes_``; a registry Predictor ``classes``.
    known = getattr(model, "classes_", None)
    if known is None:
        known = getattr(model, "classes", None)
    model_classes = list(known) if known is not None else list(target.classes)
    proba = np.zeros((len(y_pred), len(target.classes)))
    for column, label in enumerate(target.classes):
        if label in model_classes:
            proba[:, column] = raw[:, model_classes.index(label)]
    return y_pred, proba


def compute_metrics(
    y_true: Sequence[Any] | Any, y_pred: Sequence[Any] | Any, proba: Any | None, target: Target
) -> dict[str, float]:
    """Every metric of the task, each computed by the matching scikit-learn function."""
    import numpy as np
    from sklearn import metrics as skm

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if target.task == "regression":
        return {
            "mae": float(skm.mean_absolute_error(y_true, y_pred)),
            "rmse": float(skm.root_mean_squared_error(y_true, y_pred)),
            "r2": float(skm.r2_score(y_true, y_pred)),
            "mape": float(skm.mean_absolute_percentage_error(y_true, y_pred)),
        }
    labels = list(target.classes)
    out: dict[str, float] = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
    }
    averages = [("macro", None), ("weighted", None)]
    if target.binary:
        averages.append(("binary", target.pos_label))
    for average, pos_label in averages:
        kwargs = {"pos_label": pos_label} if average == "binary" else {"labels": labels}
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=0, **kwargs
        )
        suffix = "" if average == "binary" else f"_{average}"
        out[f"precision{suffix}"] = float(precision)
        out[f"recall{suffix}"] = float(recall)
        out[f"f1{suffix}"] = float(f1)
    if not target.binary:
        for name in ("precision", "recall", "f1"):
            out[name] = out[f"{name}_macro"]
    if proba is not None:
        out.update(_probability_metrics(y_true, proba, target))
    return out


def _probability_metrics(y_true: Any, proba: Any, target: Target) -> dict[str, float]:
    import numpy as np
    from sklearn import metrics as skm
    from sklearn.preprocessing import label_binarize

    labels = list(target.classes)
    present = set(np.unique(y_true).tolist())
    # ONNX Runtime answers in float32, whose rows sum to 1 only within ~1e-7; log loss wants
    # float64 rows that sum to 1.
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)
    out: dict[str, float] = {"log_loss": float(skm.log_loss(y_true, proba, labels=labels))}
    if len(present) < 2:
        return out  # AUCs are undefined with one class
    if target.binary:
        pos = labels.index(target.pos_label)
        positive = y_true == target.pos_label
        out["roc_auc"] = float(skm.roc_auc_score(positive, proba[:, pos]))
        out["pr_auc"] = float(skm.average_precision_score(positive, proba[:, pos]))
    elif present == set(labels):
        out["roc_auc"] = float(
            skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels)
        )
        out["pr_auc"] = float(
            skm.average_precision_score(label_binarize(y_true, classes=labels), proba,
                                        average="macro")
        )
    return out


def confusion(y_true: Any, y_pred: Any, target: Target) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=list(target.classes))
    return [[int(v) for v in row] for row in matrix]


def curves(y_true: Any, proba: Any, target: Target, max_points: int = 200) -> dict[str, Any]:
    """ROC and precision-recall curves of the positive class (binary) for reports."""
    import numpy as np
    from sklearn.metrics import precision_recall_curve, roc_curve

    if proba is None or not target.binary or len(np.unique(y_true)) < 2:
        return {}
    pos = list(target.classes).index(target.pos_label)
    positive = np.asarray(y_true) == target.pos_label
    fpr, tpr, _ = roc_curve(positive, proba[:, pos])
    precision, recall, _ = precision_recall_curve(positive, proba[:, pos])

    def thin(*arrays: Any) -> list[list[float]]:
        step = max(1, len(arrays[0]) // max_points)
        return [[round(float(v), 5) for v in a[::step]] + [round(float(a[-1]), 5)]
                for a in arrays]

    roc = thin(fpr, tpr)
    pr = thin(recall, precision)
    return {"roc": {"fpr": roc[0], "tpr": roc[1]}, "pr": {"recall": pr[0], "precision": pr[1]}}
