"""k-fold cross-validation of many models on one fixed set of folds, in parallel.

Every (model, fold) pair is one joblib task, so a search over settings and the candidates all
share the workers (``n_jobs``) and report progress fold by fold. Each task fits a clone on the
fold's training rows and computes every metric on its validation rows, like scikit-learn's
``cross_validate`` with a multi-metric scorer. Fold metrics use the NumPy formulas of
:mod:`mlharbor.evaluation.bootstrap` (tested equal to scikit-learn's), which cost well under
a millisecond where a dozen scikit-learn metric calls cost ~50 ms per fold.

With an ``engine`` (:mod:`mlharbor.compute`, e.g. a Dask cluster) the same (model, fold) tasks
run through :meth:`Engine.map_unordered` instead of local joblib workers: each task carries its
estimator and fold indices, so a task whose worker dies can be run again elsewhere, and the
fold results are put back in fold order, so the metrics equal a local run's exactly (same
clone, same seeds, same rows). Progress is reported as folds finish, in any order.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from mlharbor.core.warning_tally import CaughtWarning, catching
from mlharbor.evaluation.bootstrap import fast_metrics
from mlharbor.evaluation.metrics import Target, higher_is_better, predictions

if TYPE_CHECKING:
    from mlharbor.compute import Engine


@dataclasses.dataclass(frozen=True)
class FoldScores:
    fold: int
    metrics: dict[str, float]
    fit_seconds: float
    score_seconds: float
    # Library warnings of this fit, caught in the worker; the caller summarises them.
    warnings: tuple[CaughtWarning, ...] = ()


@dataclasses.dataclass(frozen=True)
class CVResult:
    """Per-fold metrics of one model, with mean and standard deviation."""

    key: str
    folds: list[FoldScores]

    def values(self, metric: str) -> list[float]:
        return [f.metrics.get(metric, math.nan) for f in self.folds]

    def mean(self, metric: str) -> float:
        values = self.values(metric)
        return sum(values) / len(values) if values else math.nan

    def std(self, metric: str) -> float:
        values = self.values(metric)
        if len(values) < 2:
            return 0.0
        mu = sum(values) / len(values)
        return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))

    def summary(self) -> dict[str, Any]:
        names = sorted({m for f in self.folds for m in f.metrics})
        return {
            "folds": [{"fold": f.fold, **f.metrics, "fit_seconds": round(f.fit_seconds, 4)}
                      for f in self.folds],
            "mean": {m: self.mean(m) for m in names},
            "std": {m: self.std(m) for m in names},
        }


def _fit_and_score(
    estimator: Any, X: Any, y: Any, train: Any, test: Any, target: Target, fold: int
) -> FoldScores:
    from sklearn.base import clone

    model = clone(estimator)
    caught: list[CaughtWarning] = []
    with catching(caught):
        started = time.perf_counter()
        model.fit(X.iloc[train], y[train])
        fitted = time.perf_counter()
        y_pred, proba = predictions(model, X.iloc[test], target)
        scores = fast_metrics(y[test], y_pred, proba, target)
    return FoldScores(fold, scores, fitted - started, time.perf_counter() - fitted,
                      tuple(caught))


@dataclasses.dataclass(frozen=True)
class FoldTask:
    """One (model, fold) fit as an engine task: everything it needs travels with it, so an
    engine can run it again on another worker when the first one dies."""

    key: str
    estimator: Any
    fold: int
    train: Any
    test: Any


@dataclasses.dataclass(frozen=True)
class FitAndScore:
    """The task function: fits one :class:`FoldTask` on ``X``/``y`` and scores it.

    A picklable object rather than a closure, so Dask ships it (with the data) to workers.
    Library parallelism inside the fit runs sequentially: the engine's slots are already all
    busy with folds, and joblib's Dask backend would otherwise send a forest's trees back to
    the cluster as nested tasks. Results do not depend on it (seeds are fixed per estimator).
    """

    X: Any
    y: Any
    target: Target

    def __call__(self, task: FoldTask) -> FoldScores:
        from joblib import parallel_config

        with parallel_config(backend="sequential"):
            return _fit_and_score(task.estimator, self.X, self.y, task.train, task.test,
                                  self.target, task.fold)


def cross_validate_many(
    models: Sequence[tuple[str, Any]],
    X: Any,
    y: Any,
    folds: Sequence[tuple[Any, Any]],
    target: Target,
    *,
    n_jobs: int = -1,
    on_fold: Callable[[str, FoldScores], None] | None = None,
    engine: Engine | None = None,
) -> dict[str, CVResult]:
    """Fit and score each ``(key, estimator)`` on every fold; results keyed like ``models``.

    Without ``engine``, ``n_jobs`` local joblib workers run the folds (progress in task
    order); with one, its workers do (``n_jobs`` is then unused; progress as folds finish).
    Either way each result lists its folds in fold order.
    """
    tasks = [FoldTask(key, est, i, tr, te)
             for key, est in models for i, (tr, te) in enumerate(folds)]
    per_key: dict[str, list[FoldScores]] = {key: [] for key, _ in models}
    for task, scores in _run_tasks(tasks, X, y, target, n_jobs, engine):
        per_key[task.key].append(scores)
        if on_fold is not None:
            on_fold(task.key, scores)
    return {key: CVResult(key, sorted(scores, key=lambda f: f.fold))
            for key, scores in per_key.items()}


def _run_tasks(
    tasks: list[FoldTask], X: Any, y: Any, target: Target, n_jobs: int, engine: Engine | None
) -> Iterator[tuple[FoldTask, FoldScores]]:
    if engine is not None:
        for index, scores in engine.map_unordered(FitAndScore(X, y, target), tasks):
            yield tasks[index], scores
        return
    from joblib import Parallel, delayed

    runner = Parallel(n_jobs=n_jobs, return_as="generator")
    outputs = runner(
        delayed(_fit_and_score)(t.estimator, X, y, t.train, t.test, target, t.fold)
        for t in tasks
    )
    yield from zip(tasks, outputs, strict=True)


def score_fixed_model(
    model: Any, X: Any, y: Any, folds: Sequence[tuple[Any, Any]], target: Target, key: str
) -> CVResult:
    """Score an already-fitted model (the champion) on each validation fold, without refitting."""
    scores = []
    for i, (_, test) in enumerate(folds):
        started = time.perf_counter()
        y_pred, proba = predictions(model, X.iloc[test], target)
        metrics = fast_metrics(y[test], y_pred, proba, target)
        scores.append(FoldScores(i, metrics, 0.0, time.perf_counter() - started))
    return CVResult(key, scores)


def best_key(results: dict[str, CVResult], metric: str) -> str:
    """The key with the best mean ``metric`` (ties: the first); NaN means never best."""
    sign = 1.0 if higher_is_better(metric) else -1.0

    def score(key: str) -> float:
        value = results[key].mean(metric)
        return -math.inf if math.isnan(value) else sign * value

    return max(results, key=score)


def paired_fold_test(
    first: CVResult, second: CVResult, metric: str, test_share: float
) -> dict[str, Any]:
    """Corrected resampled t-test (Nadeau & Bengio 2003) of ``first - second`` over folds.

    Folds share training rows, so the plain paired t-test is over-confident; the variance is
    inflated by ``1/k + n_test/n_train``.
    """
    from scipy import stats

    diffs = [a - b for a, b in zip(first.values(metric), second.values(metric), strict=True)]
    diffs = [d for d in diffs if not math.isnan(d)]
    k = len(diffs)
    out: dict[str, Any] = {"metric": metric, "method": "corrected resampled t-test",
                           "folds": k}
    if k < 2:
        return {**out, "difference": math.nan, "p_value": None}
    mean = sum(diffs) / k
    var = sum((d - mean) ** 2 for d in diffs) / (k - 1)
    ratio = test_share / (1 - test_share)
    if var == 0:
        p_value = 1.0 if mean == 0 else 0.0
    else:
        t = mean / math.sqrt((1 / k + ratio) * var)
        p_value = float(2 * stats.t.sf(abs(t), df=k - 1))
    return {**out, "difference": mean, "p_value": p_value}
