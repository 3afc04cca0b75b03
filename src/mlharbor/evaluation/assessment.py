"""Score candidates, the naive baseline and the champion on the SAME folds and holdout, pick the
winner by the primary metric, compare it (paired tests) and judge the gates.

Input: unfitted candidate pipelines (one per search setting) and the split. Output: the
winner fitted on the training part and the evaluation report (JSON-ready).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mlharbor.evaluation.baselines import baseline_estimator
from mlharbor.evaluation.bootstrap import paired_difference, resample_indices
from mlharbor.evaluation.crossval import (
    CVResult,
    FoldScores,
    best_key,
    cross_validate_many,
    paired_fold_test,
    score_fixed_model,
)
from mlharbor.evaluation.gates import Evidence, Gate, GateVerdict, evaluate_gates
from mlharbor.evaluation.metrics import Target
from mlharbor.evaluation.report import REPORT_FORMAT, HoldoutResult, clean_json, evaluate_holdout
from mlharbor.evaluation.slices import SliceSpec, evaluate_slices

if TYPE_CHECKING:
    from mlharbor.compute import Engine

BASELINE = "baseline"


@dataclasses.dataclass(frozen=True)
class CandidateSetting:
    """One setting of one candidate: an unfitted pipeline and the params that made it."""

    key: str
    candidate: str
    estimator: str
    params: dict[str, Any]
    pipeline: Any


@dataclasses.dataclass
class Assessment:
    winner: CandidateSetting
    model: Any  # the winner, fitted on the training part
    report: dict[str, Any]
    verdicts: list[GateVerdict]
    metrics: dict[str, float]
    holdout: HoldoutResult


def assess(
    settings: Sequence[CandidateSetting],
    data: tuple[Any, Any, Any, Any],
    folds: Sequence[tuple[Any, Any]],
    target: Target,
    *,
    primary: str,
    gates: list[Gate],
    baseline: str = "auto",
    seed: int = 0,
    resamples: int = 500,
    champion: Any | None = None,
    champion_ref: str | None = None,
    champion_error: str | None = None,
    n_jobs: int = -1,
    on_fold: Callable[[str, FoldScores], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    slices: Sequence[SliceSpec] = (),
    slice_frame: Any = None,
    engine: Engine | None = None,
) -> Assessment:
    """``data`` is ``(X_train, y_train, X_holdout, y_holdout)``; folds index the training part.
    With ``engine`` (a Dask cluster), the CV and search fits run on it instead of ``n_jobs``
    local workers."""
    X_train, y_train, X_hold, y_hold = data
    stage = on_stage or (lambda _: None)
    strategy, dummy = baseline_estimator(target.task, baseline, seed)
    jobs = [(s.key, s.pipeline) for s in settings] + [(BASELINE, dummy)]
    stage("folds")
    cv = cross_validate_many(jobs, X_train, y_train, folds, target, n_jobs=n_jobs,
                             on_fold=on_fold, engine=engine)
    by_candidate: dict[str, list[CandidateSetting]] = {}
    for s in settings:
        by_candidate.setdefault(s.candidate, []).append(s)
    best_of = {
        name: next(s for s in group if s.key == best_key({s.key: cv[s.key] for s in group},
                                                           primary))
        for name, group in by_candidate.items()
    }
    winner_key = best_key({s.key: cv[s.key] for s in best_of.values()}, primary)
    winner = next(s for s in settings if s.key == winner_key)

    stage("fit")
    from sklearn.base import clone

    model = clone(winner.pipeline).fit(X_train, y_train)
    fitted_baseline = clone(dummy).fit(X_train, y_train)
    indices = resample_indices(len(y_hold), resamples, seed) if resamples else []
    stage("holdout")
    holdout = evaluate_holdout(model, X_hold, y_hold, target, indices)
    base_hold = evaluate_holdout(fitted_baseline, X_hold, y_hold, target, indices,
                                 with_curves=False)
    test_share = len(folds[0][1]) / (len(folds[0][0]) + len(folds[0][1])) if folds else 0.2
    baseline_block: dict[str, Any] = {
        "strategy": strategy,
        "cv": cv[BASELINE].summary(),
        "holdout": base_hold.to_dict(),
        "comparison": _compare(holdout, base_hold, primary, cv[winner_key], cv[BASELINE],
                               test_share),
    }
    champion_block: dict[str, Any] | None = None
    champion_hold: HoldoutResult | None = None
    if champion_error is not None:
        champion_block = {"ref": champion_ref, "error": champion_error}
    if champion is not None:
        stage("champion")
        try:
            champion_cv = score_fixed_model(champion, X_train, y_train, folds, target,
                                            "champion")
            champion_hold = evaluate_holdout(champion, X_hold, y_hold, target, indices,
                                             with_curves=False)
        except Exception as exc:  # the champion may not accept this data's columns
            champion_block = {"ref": champion_ref, "error": f"{type(exc).__name__}: {exc}"}
        else:
            champion_block = {
                "ref": champion_ref,
                "cv": champion_cv.summary(),
                "holdout": champion_hold.to_dict(),
                "comparison": _compare(holdout, champion_hold, primary, cv[winner_key],
                                       champion_cv, test_share),
                "note": "the champion is scored as is (not refitted) on each validation fold",
            }
    slice_report = None
    if slices and slice_frame is not None:  # the holdout rows, every column, in y_hold's order
        stage("slices")
        slice_report = evaluate_slices(slices, slice_frame, y_hold, holdout.y_pred,
                                       holdout.proba, target, primary, holdout.metrics,
                                       resamples=resamples, seed=seed)
    evidence = Evidence(
        slices=slice_report.evidence() if slice_report is not None else {},
        primary=primary,
        holdout=holdout.metrics,
        cv_mean=_means(cv[winner_key]),
        baseline_holdout=base_hold.metrics,
        baseline_test=baseline_block["comparison"]["holdout"],
        champion_holdout=champion_hold.metrics if champion_hold else None,
        champion_test=(champion_block or {}).get("comparison", {}).get("holdout"),
        champion_ref=champion_ref,
        champion_error=(champion_block or {}).get("error"),
    )
    verdicts = evaluate_gates(gates, evidence)
    candidates = []
    for name, group in by_candidate.items():
        best = best_of[name]
        candidates.append({
            "name": name,
            "estimator": best.estimator,
            "settings_tried": len(group),
            "best_params": best.params,
            "cv": cv[best.key].summary(),
            "search": [{"params": s.params, "mean": cv[s.key].mean(primary),
                        "std": cv[s.key].std(primary)} for s in group] if len(group) > 1 else [],
        })
    report = {
        "format": REPORT_FORMAT,
        "task": target.task,
        "classes": list(target.classes),
        "positive_class": target.pos_label,
        "primary_metric": primary,
        "winner": winner.candidate,
        "winner_params": winner.params,
        "candidates": candidates,
        "cv": cv[winner_key].summary(),
        "holdout": holdout.to_dict(),
        "baseline": baseline_block,
        "champion": champion_block,
        "gates": [v.to_dict() for v in verdicts],
        "passed": all(v.passed for v in verdicts),
        "seed": seed,
        "bootstrap_resamples": resamples,
    }
    if slice_report is not None:
        report["slices"] = slice_report.to_dict()
    metrics = dict(holdout.metrics)
    for name, value in _means(cv[winner_key]).items():
        metrics[f"cv.{name}"] = value
    metrics[f"cv.{primary}.std"] = cv[winner_key].std(primary)
    metrics[f"baseline.{primary}"] = base_hold.metrics.get(primary, math.nan)
    metrics = {k: float(v) for k, v in metrics.items() if not math.isnan(v)}
    return Assessment(winner, model, clean_json(report), verdicts, metrics, holdout)


def _means(result: CVResult) -> dict[str, float]:
    names = sorted({m for f in result.folds for m in f.metrics})
    return {m: result.mean(m) for m in names}


def _compare(
    mine: HoldoutResult, theirs: HoldoutResult, metric: str,
    cv_mine: CVResult, cv_theirs: CVResult, test_share: float,
) -> dict[str, Any]:
    holdout = paired_difference(metric, (mine.metrics, theirs.metrics),
                                (mine.draws, theirs.draws))
    return {"holdout": holdout, "cv": paired_fold_test(cv_mine, cv_theirs, metric, test_share)}


def permutation_importances(
    model: Any, X: Any, y: Any, target: Target, metric: str, *, seed: int = 0,
    repeats: int = 3, max_rows: int = 2000,
) -> dict[str, float]:
    """Drop in ``metric`` when one raw input column is shuffled (mean over ``repeats``)."""
    import numpy as np
    from sklearn.inspection import permutation_importance

    from mlharbor.evaluation.bootstrap import fast_metrics
    from mlharbor.evaluation.metrics import higher_is_better, predictions

    if len(X) > max_rows:
        X, y = X.iloc[:max_rows], y[:max_rows]
    sign = 1.0 if higher_is_better(metric) else -1.0

    def score(estimator: Any, data: Any, truth: Any) -> float:
        y_pred, proba = predictions(estimator, data, target)
        return sign * fast_metrics(truth, y_pred, proba, target).get(metric, np.nan)

    result = permutation_importance(model, X, y, scoring=score, n_repeats=repeats,
                                    random_state=seed, n_jobs=1)
    return {str(c): float(v) for c, v in zip(X.columns, result.importances_mean, strict=True)}


def model_importances(model: Any) -> dict[str, Any]:
    """The estimator's own importances (impurity or coefficients) by prepared feature name."""
    import numpy as np

    estimator = model.steps[-1][1]
    values = getattr(estimator, "feature_importances_", None)
    if values is None and hasattr(estimator, "coef_"):
        values = np.abs(np.asarray(estimator.coef_)).reshape(-1, np.shape(estimator.coef_)[-1])
        values = values.mean(axis=0)
    if values is None:
        return {}
    try:
        names = model.named_steps["prepare"].get_feature_names_out()
    except Exception:  # not every step knows its output names
        names = [f"f{i}" for i in range(len(values))]
    return {"model_importances": {str(n): float(v) for n, v in zip(names, values, strict=False)}}
