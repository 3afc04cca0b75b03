"""The evaluation report: holdout metrics with bootstrap intervals, confusion matrix, curves,
CV folds, baseline and champion comparisons and gate verdicts, as one JSON document.

``evaluate_holdout`` scores one model on a holdout; pipelines assemble the full report from
those pieces, and :mod:`mlharbor.evaluation.html` renders it as a self-contained page.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mlharbor.evaluation.bootstrap import bootstrap_draws, intervals
from mlharbor.evaluation.metrics import Target, compute_metrics, confusion, curves, predictions

REPORT_FORMAT = "mlharbor.evaluation/v1"


@dataclasses.dataclass(frozen=True)
class HoldoutResult:
    """One model scored on the holdout; predictions kept for paired comparisons."""

    metrics: dict[str, float]
    ci: dict[str, list[float]]
    confusion_matrix: list[list[int]] | None
    curves: dict[str, Any]
    y_pred: Any
    proba: Any | None
    draws: dict[str, Any]  # metric -> values over the shared bootstrap resamples

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"metrics": self.metrics, "ci95": self.ci}
        if self.confusion_matrix is not None:
            body["confusion_matrix"] = self.confusion_matrix
        if self.curves:
            body["curves"] = self.curves
        return body


def evaluate_holdout(
    model: Any, X: Any, y: Any, target: Target, indices: Any, *, with_curves: bool = True
) -> HoldoutResult:
    """Metrics (scikit-learn), 95% bootstrap intervals on ``indices``, confusion and curves."""
    y_pred, proba = predictions(model, X, target)
    return score_predictions(y, y_pred, proba, target, indices, with_curves=with_curves)


def score_predictions(
    y: Any, y_pred: Any, proba: Any | None, target: Target, indices: Any,
    *, with_curves: bool = True,
) -> HoldoutResult:
    metrics = compute_metrics(y, y_pred, proba, target)
    draws = bootstrap_draws(y, y_pred, proba, target, indices) if len(indices) else {}
    ci = intervals(draws, len(indices))
    matrix = confusion(y, y_pred, target) if target.task == "classification" else None
    drawn = curves(y, proba, target) if with_curves else {}
    return HoldoutResult(metrics, ci, matrix, drawn, y_pred, proba, draws)


def clean_json(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) with None, recursively; numpy scalars to Python."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def score_on_data(
    model: Any, frame: Any, schema: dict[str, Any], recipe: dict[str, Any], *,
    resamples: int = 500,
) -> dict[str, Any]:
    """Score a fitted model on a labelled frame (``schema``: target, task, features, classes),
    beside the naive baseline (majority class or mean, as training's) fitted on these labels:
    the best constant guess for this data, compared on the same bootstrap resamples."""
    from mlharbor.evaluation.baselines import baseline_estimator
    from mlharbor.evaluation.bootstrap import paired_difference, resample_indices
    from mlharbor.evaluation.metrics import default_primary

    target_column = schema["target"]
    frame = frame[frame[target_column].notna()]
    classes = tuple(schema.get("classes") or ())
    pos_label = (recipe.get("data") or {}).get("positive_class")
    target = Target(schema["task"], classes,
                    pos_label if pos_label is not None else (classes[-1] if classes else None))
    y = frame[target_column].to_numpy()
    X = frame[list(schema["features"])]
    indices = resample_indices(len(y), resamples, 0) if resamples else []
    result = evaluate_holdout(model, X, y, target, indices)
    metrics_spec = recipe.get("metrics") or {}
    primary = metrics_spec.get("primary") or default_primary(target.task, len(classes))
    strategy, dummy = baseline_estimator(target.task, metrics_spec.get("baseline") or "auto")
    base = evaluate_holdout(dummy.fit(X, y), X, y, target, indices, with_curves=False)
    return {
        "format": REPORT_FORMAT,
        "task": target.task,
        "classes": list(classes),
        "positive_class": target.pos_label,
        "primary_metric": primary,
        "rows": len(y),
        "holdout": result.to_dict(),
        "baseline": {
            "strategy": strategy, "fitted_on": "the evaluated rows' labels",
            "holdout": base.to_dict(),
            "comparison": {"holdout": paired_difference(
                primary, (result.metrics, base.metrics), (result.draws, base.draws))},
        },
    }
