"""Bootstrap confidence intervals for holdout metrics and paired differences between models.

Point estimates come from scikit-learn (:mod:`mlharbor.evaluation.metrics`). Resampling calls
a metric thousands of times, so here the same formulas are written directly on NumPy arrays
(confusion counts, rank-based ROC AUC, step-wise average precision); a test checks they equal
scikit-learn on the full sample. Every model is resampled with the SAME row indices, so the
difference between two models is a paired comparison.
"""

from __future__ import annotations

from typing import Any

from mlharbor.core.errors import InvalidInputError
from mlharbor.evaluation.metrics import Target, higher_is_better

CONFIDENCE = 0.95


def resample_indices(n: int, resamples: int, seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n))


def fast_metrics(
    y_true: Any, y_pred: Any, proba: Any | None, target: Target, rows: Any | None = None
) -> dict[str, float]:
    """Every metric of the task on ``rows`` (all when None), without scikit-learn's overhead."""
    import numpy as np

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if target.task == "regression":
        if rows is not None:
            y_true, y_pred = y_true[rows], y_pred[rows]
        return _regression(y_true.astype(float), y_pred.astype(float))
    t, p = _codes(y_true, list(target.classes)), _codes(y_pred, list(target.classes))
    if rows is not None:
        t, p = t[rows], p[rows]
        proba = proba[rows] if proba is not None else None
    return _classification(t, p, proba, target)


def _regression(y_true: Any, y_pred: Any) -> dict[str, float]:
    import numpy as np

    err = y_pred - y_true
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    eps = np.finfo(np.float64).eps
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
        "mape": float((np.abs(err) / np.maximum(np.abs(y_true), eps)).mean()),
    }


def _classification(t: Any, p: Any, proba: Any | None, target: Target) -> dict[str, float]:
    """Metrics from class codes ``t`` (truth) and ``p`` (prediction), 0..k-1."""
    import numpy as np

    classes = list(target.classes)
    k = len(classes)
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(float)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    recall = _ratio(tp, support)
    precision = _ratio(tp, predicted)
    f1 = _ratio(2 * tp, support + predicted)
    out = {
        "accuracy": float(tp.sum() / len(t)),
        "balanced_accuracy": float(recall[support > 0].mean()),
    }
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[f"{name}_macro"] = float(values.mean())
        out[f"{name}_weighted"] = float((values * support).sum() / support.sum())
        if target.binary:
            out[name] = float(values[classes.index(target.pos_label)])
        else:
            out[name] = out[f"{name}_macro"]
    if proba is not None:
        eps = np.finfo(np.float64).eps
        chosen = np.clip(proba, eps, 1 - eps)
        chosen = chosen / chosen.sum(axis=1, keepdims=True)
        out["log_loss"] = float(-np.log(chosen[np.arange(len(t)), t]).mean())
        if target.binary:
            positive = t == classes.index(target.pos_label)
            score = proba[:, classes.index(target.pos_label)]
            if 0 < positive.sum() < len(positive):
                out["roc_auc"] = _roc_auc(positive, score)
                out["pr_auc"] = _average_precision(positive, score)
    return out


def _codes(values: Any, classes: list[Any]) -> Any:
    import numpy as np

    lookup = {label: i for i, label in enumerate(classes)}
    try:
        return np.fromiter((lookup[v] for v in values.tolist()), dtype=np.int64,
                           count=len(values))
    except KeyError as exc:
        raise InvalidInputError(
            f"The label {exc.args[0]!r} is not one of the known classes {classes}.",
            hint="Score a model on data with the same target classes it was trained on.",
        ) from exc


def _ratio(num: Any, den: Any) -> Any:
    import numpy as np

    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def _roc_auc(positive: Any, score: Any) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos = float(positive.sum())
    n_neg = float(len(positive) - n_pos)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_precision(positive: Any, score: Any) -> float:
    import numpy as np

    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], positive[order].astype(float)
    last = np.r_[np.where(np.diff(s) != 0)[0], len(s) - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def bootstrap_draws(
    y_true: Any, y_pred: Any, proba: Any | None, target: Target, indices: Any
) -> dict[str, Any]:
    """Each metric over the resamples in ``indices`` (one value per resample row)."""
    import numpy as np

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    draws: dict[str, list[float]] = {}
    if target.task == "regression":
        t_all, p_all = y_true.astype(float), y_pred.astype(float)
        for rows in indices:
            for name, value in _regression(t_all[rows], p_all[rows]).items():
                draws.setdefault(name, []).append(value)
    else:
        t_all = _codes(y_true, list(target.classes))
        p_all = _codes(y_pred, list(target.classes))
        for rows in indices:
            sample = proba[rows] if proba is not None else None
            for name, value in _classification(t_all[rows], p_all[rows], sample,
                                               target).items():
                draws.setdefault(name, []).append(value)
    return {name: np.asarray(values, dtype=float) for name, values in draws.items()}


def intervals(draws: dict[str, Any], resamples: int) -> dict[str, list[float]]:
    """95% percentile intervals from :func:`bootstrap_draws` (skipped if mostly undefined)."""
    import numpy as np

    alpha = (1 - CONFIDENCE) / 2
    out = {}
    for name, arr in draws.items():
        kept = arr[~np.isnan(arr)]
        if len(kept) >= max(10, resamples // 2):
            out[name] = [float(np.quantile(kept, alpha)), float(np.quantile(kept, 1 - alpha))]
    return out


def paired_difference(
    metric: str,
    full: tuple[dict[str, float], dict[str, float]],
    draws: tuple[dict[str, Any], dict[str, Any]],
) -> dict[str, Any]:
    """``metric(first) - metric(second)``: estimate, 95% CI and p-value from draws made on the
    SAME resamples. ``significantly_better``: first beats second and the CI excludes zero.
    """
    import numpy as np

    a, b = full[0].get(metric, float("nan")), full[1].get(metric, float("nan"))
    nan = np.full(1, np.nan)
    diffs = draws[0].get(metric, nan) - draws[1].get(metric, nan)
    diffs = diffs[~np.isnan(diffs)]
    if len(diffs) == 0:
        return {"metric": metric, "difference": a - b, "ci": None, "p_value": None,
                "significantly_better": False}
    alpha = (1 - CONFIDENCE) / 2
    low, high = float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))
    p_value = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    better = low > 0 if higher_is_better(metric) else high < 0
    return {
        "metric": metric,
        "difference": float(a - b),
        "ci": [low, high],
        "p_value": p_value,
        "significantly_better": bool(better),
        "method": "paired bootstrap",
        "resamples": len(diffs),
    }
