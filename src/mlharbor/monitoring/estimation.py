"""Performance estimated without labels: confidence-based performance estimation (CBPE).

Labels often arrive weeks after the predictions. For a classifier whose probabilities are
calibrated, the probability that a row's predicted label is right is known from the prediction
alone, so a window's expected accuracy (and, for two classes, its expected confusion matrix and
so precision, recall and F1) follows from the predicted probabilities, as NannyML's CBPE does.

**Fit, on the reference** (the holdout, where labels are known). The expected calibration error
(ECE) is measured over equal-mass bins of the score (the probability of the positive class for
two classes, the confidence in the predicted class otherwise): the share-weighted mean of
``|observed rate - mean predicted probability|`` per bin. With ``calibrator="auto"`` an isotonic
calibrator is fitted too (as NannyML does) and kept when it beats the raw scores; its ECE is
measured out of fold (K-fold cross-fitting), because an isotonic fit is perfectly calibrated on
its own training rows and would flatter itself. The reference is *calibrated* when the chosen
probabilities' ECE is within ``bound``; otherwise fitting refuses unless told not to.

**Estimate, on a window.** Given the window's rows, whether each predicted label is right is an
independent Bernoulli(q_i) draw, q_i the calibrated probability. So the realised accuracy
``(1/n) sum Z_i`` has mean ``(1/n) sum q_i`` (the estimate) and variance
``sum q_i (1 - q_i) / n^2``: the standard error for the window size is
``sqrt(sum q_i (1 - q_i)) / n``. Precision divides by the number of predicted positives, which is
known, so the same holds over those rows. Recall ``TP / (TP + FN)`` and F1
``2 TP / (n_pred_pos + TP + FN)`` are ratios of the independent sums TP (over predicted
positives) and FN (over predicted negatives): their standard error is the delta method's.

**Stated error.** Every metric here is, to first order, a weighted sum of the rows'
probabilities, ``sum a_i q_i`` (``a_i`` its gradient), so the standard error is
``sqrt(sum a_i^2 q_i (1 - q_i))`` and the bias from imperfect calibration is ``sum a_i b(s_i)``,
``b(s)`` the calibrated probability's error at score ``s``. ``b`` is measured on the reference
out of fold (residual ``observed - calibrated`` of rows the calibrator did not see), in bins cut
at the quantiles of the *window's* scores: under covariate shift the window sits where the
reference is sparse, and that is where a calibrator errs, so the resolution has to be there
(bins are merged until each holds :data:`MIN_BIN_ROWS` reference rows; window scores beyond the
reference's range fall in its outermost rows). The calibration error is ``|sum_b A_b r_b|`` plus
``z`` times its standard error (``A_b`` the window's gradient mass in bin ``b``, ``r_b`` the mean
residual there): an upper confidence bound on the bias. The interval is
``value -/+ (z * standard_error + calibration_error)``, clipped to [0, 1].

Assumption, as for every CBPE: no concept drift (P(y | x) unchanged) and the score carries what
calibration needs (P(right | score) is the same in the window as on the reference). Under
concept drift the estimate is wrong, and only labels show it.
"""

from __future__ import annotations

import dataclasses
from statistics import NormalDist
from typing import Any

from mlharbor.core.errors import InvalidInputError
from mlharbor.core.loop import EstimatedPerformance

BINARY_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1")
MULTICLASS_METRICS: tuple[str, ...] = ("accuracy",)
CALIBRATORS: tuple[str, ...] = ("auto", "isotonic", "never")
DEFAULT_BOUND = 0.05
MIN_REFERENCE_ROWS = 200
MIN_BIN_ROWS = 100
WINDOW_BINS = 10


@dataclasses.dataclass(frozen=True, slots=True)
class CalibrationCheck:
    """How calibrated the reference is: ECE of the raw scores, of the isotonic calibrator
    (out of fold; ``None`` when none was tried) and of the one kept, against ``bound``."""

    raw_error: float
    isotonic_error: float | None
    calibrator: str
    error: float
    bound: float
    calibrated: bool
    reference_rows: int
    bins: int


@dataclasses.dataclass(frozen=True, slots=True)
class PerformanceEstimator:
    """Fitted on a labelled reference by :func:`fit_estimator`; estimates unlabelled windows.

    Plain numbers only (the isotonic calibrator is kept as its knots, applied by linear
    interpolation with clipping as scikit-learn's ``predict`` does), so it can be stored.
    ``reference_residuals`` are ``observed - calibrated`` per reference row (out of fold),
    sorted by ``reference_scores``: what the calibration error of a window is measured on.
    """

    classes: tuple[Any, ...]
    pos_label: Any
    check: CalibrationCheck
    knots_x: tuple[float, ...] = dataclasses.field(repr=False)
    knots_y: tuple[float, ...] = dataclasses.field(repr=False)
    reference_scores: tuple[float, ...] = dataclasses.field(repr=False)
    reference_residuals: tuple[float, ...] = dataclasses.field(repr=False)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def metrics(self) -> tuple[str, ...]:
        return BINARY_METRICS if self.binary else MULTICLASS_METRICS

    def estimate(self, probabilities: Any, metric: str = "accuracy", *,
                 predictions: Any = None, confidence: float = 0.95) -> EstimatedPerformance:
        """The expected ``metric`` of a window from its predicted ``probabilities`` alone.

        ``probabilities`` is one row per prediction, columns in :attr:`classes` order (for two
        classes a 1-D array of the positive class's probability also works). ``predictions``
        are the labels served; by default the most probable class.
        """
        import numpy as np

        if metric not in self.metrics:
            kind = "two-class" if self.binary else "multi-class"
            raise InvalidInputError(
                f"Cannot estimate {metric!r} for a {kind} model; expected one of "
                f"{', '.join(self.metrics)}.", field="metric")
        if not 0.0 < confidence < 1.0:
            raise InvalidInputError(
                f"confidence must be strictly between 0 and 1, got {confidence!r}.",
                field="confidence")
        score, predicted = _scores(probabilities, predictions, self.classes, self.pos_label)
        q = self._calibrate(score)
        if self.binary:
            positive = predicted == _code(self.pos_label, self.classes)
            value, grad = _binary(metric, q, positive)
        else:
            value, grad = float(q.mean()), np.full(q.size, 1.0 / q.size)
        z = NormalDist().inv_cdf(0.5 + confidence / 2)
        se = float(np.sqrt((grad ** 2 * q * (1.0 - q)).sum()))
        cal = self._calibration_error(score, grad, z)
        return EstimatedPerformance(
            metric=metric, value=value, standard_error=se,
            lower=max(0.0, value - z * se - cal), upper=min(1.0, value + z * se + cal),
            n=int(score.size), calibrated=self.check.calibrated, calibration_error=cal,
            calibrator=self.check.calibrator, confidence=confidence)

    def _calibration_error(self, score: Any, grad: Any, z: float) -> float:
        """Upper confidence bound on the metric's bias from calibration, at the window's scores.

        The bias is ``sum_i grad_i b(s_i)``; with ``b`` constant within a bin it is
        ``sum_b A_b b_b``, and ``-b_b`` is estimated by the mean out-of-fold residual of the
        reference rows in the bin, whose standard error the bound adds ``z`` times.
        """
        import numpy as np

        ref = np.asarray(self.reference_scores)
        residual = np.asarray(self.reference_residuals)
        edges = _merged_edges(
            np.unique(np.quantile(score, np.arange(1, WINDOW_BINS) / WINDOW_BINS)), ref)
        bins = edges.size + 1
        where = np.searchsorted(edges, ref, side="right")
        rows = np.bincount(where, minlength=bins).astype(np.float64)
        mean = np.bincount(where, weights=residual, minlength=bins) / rows
        square = np.bincount(where, weights=residual ** 2, minlength=bins) / rows
        var_mean = np.maximum(square - mean ** 2, 0.0) / np.maximum(rows - 1.0, 1.0)
        mass = np.bincount(np.searchsorted(edges, score, side="right"), weights=grad,
                           minlength=bins)
        return float(abs((mass * mean).sum()) + z * np.sqrt((mass ** 2 * var_mean).sum()))

    def _calibrate(self, score: Any) -> Any:
        import numpy as np

        if not self.knots_x:
            return score
        return np.interp(score, np.asarray(self.knots_x), np.asarray(self.knots_y))


def fit_estimator(labels: Any, probabilities: Any, *, classes: Any = None,
                  pos_label: Any = None, predictions: Any = None, calibrator: str = "auto",
                  bound: float = DEFAULT_BOUND, require_calibrated: bool = True,
                  bins: int = 10, folds: int = 5, seed: int = 0) -> PerformanceEstimator:
    """Check (and if allowed, fix) calibration on the labelled reference; return the estimator.

    ``calibrator``: ``"auto"`` fits an isotonic calibrator and keeps it when its out-of-fold ECE
    beats the raw scores', ``"isotonic"`` always keeps it, ``"never"`` trusts the raw scores.
    Raises :class:`InvalidInputError` when the model gave no probabilities, when the inputs do
    not line up, or (with ``require_calibrated``) when the kept probabilities' ECE is above
    ``bound``: an estimate from miscalibrated probabilities would be confidently wrong.
    """
    import numpy as np

    if calibrator not in CALIBRATORS:
        raise InvalidInputError(f"Unknown calibrator {calibrator!r}; expected one of "
                                f"{', '.join(CALIBRATORS)}.", field="calibrator")
    if not 0.0 < bound < 1.0:
        raise InvalidInputError(f"bound must be strictly between 0 and 1, got {bound!r}.",
                                field="bound")
    if bins < 1 or folds < 2:
        raise InvalidInputError(f"Need bins >= 1 and folds >= 2, got {bins} and {folds}.",
                                field="bins")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise InvalidInputError(f"labels must be one value per row, got shape {y.shape}.",
                                field="labels")
    cls = tuple(np.unique(y).tolist()) if classes is None else tuple(classes)
    if len(cls) < 2:
        raise InvalidInputError(f"Need at least two classes, got {list(cls)}.", field="classes")
    unknown = set(np.unique(y).tolist()) - set(cls)
    if unknown:
        raise InvalidInputError(f"labels hold classes {sorted(map(str, unknown))} that are not "
                                f"in classes {list(cls)}.", field="labels")
    pos = cls[-1] if pos_label is None else pos_label
    if len(cls) == 2 and pos not in cls:
        raise InvalidInputError(f"pos_label {pos!r} is not one of the classes {list(cls)}.",
                                field="pos_label")
    score, predicted = _scores(probabilities, predictions, cls, pos)
    if score.size != y.size:
        raise InvalidInputError(f"{y.size} labels but {score.size} rows of probabilities.",
                                field="labels")
    if y.size < MIN_REFERENCE_ROWS:
        raise InvalidInputError(
            f"The reference has {y.size} labelled rows; checking calibration needs at least "
            f"{MIN_REFERENCE_ROWS}.", field="labels")
    codes = _codes(y, cls)
    # The calibrated target: the positive class for two classes (the expected confusion matrix
    # needs P(y = pos)), whether the predicted label is right otherwise (accuracy needs only it).
    target = (codes == _code(pos, cls)) if len(cls) == 2 else (codes == predicted)
    target = target.astype(np.float64)
    edges = _edges(score, bins)
    raw_ece = _ece(score, target, score, edges)
    iso_ece: float | None = None
    knots: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
    kept, calibrated, ece = "none", score, raw_ece
    if calibrator != "never":
        oof = _out_of_fold(score, target, folds, seed)
        iso_ece = _ece(oof, target, score, edges)
        if calibrator == "isotonic" or iso_ece < raw_ece:
            kept, calibrated, ece = "isotonic", oof, iso_ece
            knots = _isotonic(score, target)
    check = CalibrationCheck(raw_error=raw_ece, isotonic_error=iso_ece, calibrator=kept,
                             error=ece, bound=bound, calibrated=ece <= bound,
                             reference_rows=int(y.size), bins=len(edges) + 1)
    if require_calibrated and not check.calibrated:
        tried = (" An isotonic calibrator was not allowed (calibrator='never'); allow one with "
                 "calibrator='auto'." if calibrator == "never" else
                 f" Even after isotonic calibration it is {iso_ece:.3f}; a larger reference "
                 "may calibrate better.")
        raise InvalidInputError(
            f"The model's probabilities are not calibrated on the reference: expected "
            f"calibration error {ece:.3f} is above the bound {bound:.3f}, so estimated "
            f"performance would be confidently wrong.{tried}",
            field="probabilities", raw_error=raw_ece, bound=bound)
    order = np.argsort(score, kind="stable")
    return PerformanceEstimator(
        classes=cls, pos_label=pos, check=check, knots_x=knots[0], knots_y=knots[1],
        reference_scores=tuple(score[order].tolist()),
        reference_residuals=tuple((target - calibrated)[order].tolist()))


def _scores(probabilities: Any, predictions: Any, classes: tuple[Any, ...],
            pos_label: Any) -> tuple[Any, Any]:
    """(score per row, predicted class code per row), checked.

    The score is P(pos) for two classes, the confidence in the predicted class otherwise.
    """
    import numpy as np

    if probabilities is None:
        raise InvalidInputError(
            "Performance cannot be estimated without labels for this model: it gives no class "
            "probabilities.", hint="Only classifiers with predict_proba can be estimated; "
            "wait for feedback labels instead.", field="probabilities")
    try:
        p = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"probabilities must be numbers: {exc}",
                                field="probabilities") from exc
    k = len(classes)
    if p.ndim == 1 and k == 2:
        pos = _code(pos_label, classes)
        p = np.column_stack([1.0 - p, p]) if pos == 1 else np.column_stack([p, 1.0 - p])
    if p.ndim != 2 or p.shape[1] != k:
        raise InvalidInputError(
            f"probabilities must have one column per class ({k}: {list(classes)}), got shape "
            f"{p.shape}.", field="probabilities")
    if p.shape[0] == 0:
        raise InvalidInputError("The window has no rows to estimate from.",
                                field="probabilities")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise InvalidInputError("probabilities must be finite and within [0, 1].",
                                field="probabilities")
    if predictions is None:
        predicted = p.argmax(axis=1)
    else:
        pred = np.asarray(predictions)
        if pred.shape != (p.shape[0],):
            raise InvalidInputError(f"{pred.size} predictions for {p.shape[0]} rows of "
                                    "probabilities.", field="predictions")
        predicted = _codes(pred, classes)
    column = _code(pos_label, classes) if k == 2 else predicted
    return p[np.arange(p.shape[0]), column], predicted


def _code(label: Any, classes: tuple[Any, ...]) -> int:
    return classes.index(label)


def _codes(values: Any, classes: tuple[Any, ...]) -> Any:
    import numpy as np

    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.fromiter((index[v] for v in values.tolist()), dtype=np.int64,
                           count=values.size)
    except KeyError as exc:
        raise InvalidInputError(f"Label {exc.args[0]!r} is not one of the classes "
                                f"{list(classes)}.", field="labels") from exc


def _edges(score: Any, bins: int) -> Any:
    """Inner edges of equal-mass bins of the reference's scores (ties merge bins)."""
    import numpy as np

    return np.unique(np.quantile(score, np.arange(1, bins) / bins))


def _ece(prob: Any, target: Any, score: Any, edges: Any) -> float:
    """Expected calibration error: per bin of ``score``, |observed rate - mean probability|,
    weighted by the bin's share of rows."""
    import numpy as np

    index = np.searchsorted(edges, score, side="right")
    diff = np.bincount(index, weights=target - prob, minlength=edges.size + 1)
    return float(np.abs(diff).sum() / score.size)


def _merged_edges(edges: Any, reference: Any) -> Any:
    """``edges`` less those that would leave a bin with fewer than MIN_BIN_ROWS reference rows."""
    import numpy as np

    counts = np.bincount(np.searchsorted(edges, reference, side="right"),
                         minlength=edges.size + 1)
    kept: list[float] = []
    run = 0
    for edge, count in zip(edges.tolist(), counts[:-1].tolist(), strict=True):
        run += count
        if run >= MIN_BIN_ROWS:
            kept.append(edge)
            run = 0
    if kept and run + int(counts[-1]) < MIN_BIN_ROWS:
        kept.pop()  # the last bin is too thin: it joins the one before
    return np.asarray(kept, dtype=np.float64)


def _isotonic(score: Any, target: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, target)
    return (tuple(float(v) for v in iso.X_thresholds_),
            tuple(float(v) for v in iso.y_thresholds_))


def _out_of_fold(score: Any, target: Any, folds: int, seed: int) -> Any:
    """Isotonic-calibrated probabilities, each row's from a calibrator fitted without it."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(score.size)
    out = np.empty_like(score)
    for part in np.array_split(order, folds):
        train = np.ones(score.size, dtype=bool)
        train[part] = False
        x, y = _isotonic(score[train], target[train])
        out[part] = np.interp(score[part], np.asarray(x), np.asarray(y))
    return out


def _binary(metric: str, q: Any, positive: Any) -> tuple[float, Any]:
    """A two-class metric from the expected confusion matrix (``q`` = calibrated P(pos)), and its
    gradient in ``q``: TP sums ``q`` over predicted positives, FN over predicted negatives,
    and precision divides by the predicted positives, which are known."""
    import numpy as np

    n = q.size
    if metric == "accuracy":
        return float(np.where(positive, q, 1.0 - q).mean()), np.where(positive, 1.0, -1.0) / n
    predicted_positive = float(positive.sum())
    if metric == "precision":
        if predicted_positive == 0:
            raise InvalidInputError("Precision is undefined for a window with no predicted "
                                    "positives.", field="metric")
        return float(q[positive].mean()), positive / predicted_positive
    tp, fn = float(q[positive].sum()), float(q[~positive].sum())
    if metric == "recall":
        d = tp + fn
        if d <= 0.0:
            raise InvalidInputError("Recall is undefined: the window is expected to hold no "
                                    "positives.", field="metric")
        return tp / d, np.where(positive, fn / d ** 2, -tp / d ** 2)
    d = predicted_positive + tp + fn  # f1 = 2 TP / (predicted positives + TP + FN)
    if d <= 0.0:
        raise InvalidInputError("F1 is undefined: the window has no predicted or expected "
                                "positives.", field="metric")
    return 2.0 * tp / d, np.where(positive, 2.0 * (d - tp) / d ** 2, -2.0 * tp / d ** 2)
