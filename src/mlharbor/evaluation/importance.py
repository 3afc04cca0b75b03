"""Global importance and partial dependence for the evaluation report.

Two views of importance over the raw input columns, on the holdout: permutation importance
(the drop in the primary metric when one column is shuffled — model-agnostic, computed by
:func:`mlharbor.evaluation.assessment.permutation_importances`) and the mean absolute
attribution per column (from :mod:`mlharbor.explain`, when it can explain the model). The
top features by permutation importance get a partial-dependence curve
(``sklearn.inspection.partial_dependence``, brute force through the whole pipeline): the
model's average output — the positive class's probability for a binary classifier, the
prediction for a regressor — when the column is set to each grid value for every row.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from mlharbor.evaluation.metrics import Target

log = logging.getLogger("mlharbor.evaluation.importance")

TOP_FEATURES = 4
GRID_POINTS = 20
MAX_ROWS = 1000
#: Rows explained for the mean |attribution|: exact explainers are cheap; the sampled
#: fallback costs its budget per row, so it explains fewer.
EXPLAINED_ROWS = 500
SAMPLED_ROWS = 100
BACKGROUND_ROWS = 100


def top_features(importances: Mapping[str, float], k: int = TOP_FEATURES) -> list[str]:
    """The ``k`` columns with the largest importance (ties by name, NaN last)."""
    usable = [(name, v) for name, v in importances.items() if v is not None and
              not math.isnan(v)]
    return [name for name, _ in sorted(usable, key=lambda item: (-item[1], item[0]))[:k]]


def importance_report(
    model: Any, X: Any, target: Target, permutation: Mapping[str, float], *,
    background: Any = None, seed: int = 0, top: int = TOP_FEATURES,
) -> dict[str, Any]:
    """The report's ``importance`` block: both importances, and PDPs of the top features.
    ``X`` are the holdout rows, ``background`` training rows (for the explainers that need
    them)."""
    features = top_features(permutation, top)
    curves = partial_dependence_curves(model, X, features, target, seed=seed)
    attributions, note = mean_abs_attribution(model, X, target, background, seed=seed)
    return {
        "permutation": dict(permutation),
        "mean_abs_attribution": attributions,
        "attribution_note": note,
        "top_features": features,
        "partial_dependence": curves,
        "output": output_name(target),
    }


def mean_abs_attribution(
    model: Any, X: Any, target: Target, background: Any = None, *, seed: int = 0,
) -> tuple[dict[str, float] | None, str]:
    """Each input column's mean |attribution| over (a sample of) ``X``, from
    :func:`mlharbor.explain.explainers.explainer_for`, and a note saying how it was computed
    (or why there is none: the model cannot be explained)."""
    import pandas as pd

    from mlharbor.core.errors import MlharborError
    from mlharbor.core.signature import infer_signature
    from mlharbor.explain.explainers import explainer_for
    from mlharbor.formats.base import EstimatorModel
    from mlharbor.formats.sklearn import encoder_categories

    reference = background if background is not None else X
    # Inferred over every row the explainer sees, so that a value missing only in the
    # holdout (a nullable column) is not refused by the signature.
    signature = infer_signature(pd.concat([reference, X], ignore_index=True),
                                categories=encoder_categories(model))
    try:
        explainer = explainer_for(
            EstimatorModel(model, "frame"),
            reference.sample(min(len(reference), BACKGROUND_ROWS), random_state=seed),
            signature=signature, task=target.task)
        exact = "permutation" not in explainer.method
        rows = X.sample(min(len(X), EXPLAINED_ROWS if exact else SAMPLED_ROWS),
                        random_state=seed)
        found = explainer.explain(rows)
    except MlharborError as exc:
        return None, f"no attributions: {exc.message}"
    except Exception as exc:  # an explainer's library failing must not fail the training
        log.warning("no attributions for the report: %s: %s", type(exc).__name__, exc)
        return None, f"no attributions: the explainer failed ({type(exc).__name__}: {exc})"
    return found.mean_abs(), (f"{found.method} on {found.rows} holdout rows, "
                              f"{found.output_name}")


def output_name(target: Target) -> str:
    if target.task == "regression":
        return "prediction"
    return f"P({target.pos_label})"


def partial_dependence_curves(
    model: Any, X: Any, features: list[str], target: Target, *, grid: int = GRID_POINTS,
    max_rows: int = MAX_ROWS, seed: int = 0,
) -> list[dict[str, Any]]:
    """One curve per feature: ``{"feature", "kind", "grid", "average"}``, where ``kind`` is
    ``numeric`` (grid between the 5th and 95th percentiles) or ``categorical`` (each value)."""
    import numpy as np
    import pandas as pd
    from sklearn.inspection import partial_dependence

    if len(X) > max_rows:
        X = X.sample(max_rows, random_state=seed)
    X = X.reset_index(drop=True)
    curves = []
    for feature in features:
        column = X[feature]
        categorical = not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(
            column)
        if column.notna().sum() == 0:
            continue
        frame = X
        if column.isna().any():  # sklearn's grid cannot hold NaN: PDP over the known values
            frame = X[column.notna()].reset_index(drop=True)
        if not categorical and pd.api.types.is_integer_dtype(column):
            frame = frame.astype({feature: float})  # sklearn refuses integer grids
        try:
            result = partial_dependence(
                model, frame, [feature], kind="average", grid_resolution=grid,
                categorical_features=[feature] if categorical else None,
                percentiles=_percentiles(frame[feature], categorical),
                response_method="auto" if target.task == "regression" else "predict_proba",
            )
        except ValueError as exc:  # an optional chart must never fail the training
            log.warning("no partial-dependence curve for %r: %s", feature, exc)
            continue
        average = np.asarray(result["average"], dtype=float)
        values = [v.item() if hasattr(v, "item") else v for v in result["grid_values"][0]]
        curves.append({
            "feature": feature,
            "kind": "categorical" if categorical else "numeric",
            "grid": [v if categorical else float(v) for v in values],
            "average": [round(float(v), 6) for v in _row_of(average, model, target)],
        })
    return curves


def _percentiles(column: Any, categorical: bool) -> tuple[float, float]:
    """The grid's range: the 5th to 95th percentiles, or the whole range when those two are
    equal (a sparse column, 95% zeros and a few large values, such as capital gains), where
    sklearn would refuse to build a grid."""
    import numpy as np

    if categorical:
        return (0.05, 0.95)
    values = column.to_numpy(dtype=float)
    low, high = np.nanpercentile(values, [5, 95])
    return (0.05, 0.95) if not np.isclose(low, high) else (0.0, 1.0)


def _row_of(average: Any, model: Any, target: Target) -> Any:
    """The curve of the model's output named by :func:`output_name`."""
    if target.task == "regression" or (average.shape[0] == 1 and not target.classes):
        return average[0]
    classes = list(getattr(model, "classes_", target.classes))
    if average.shape[0] == 1:  # binary: sklearn answers for classes_[1]
        return average[0] if classes.index(target.pos_label) == 1 else 1.0 - average[0]
    return average[classes.index(target.pos_label)]
