"""CBPE: performance estimated from predicted probabilities alone, with a stated error.

The synthetic concept is fixed (P(y | x) is the same logistic curve everywhere); the windows
move x (covariate shift) so that the realised accuracy moves away from the reference's, and
the estimate must follow it within the error it states.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from mlharbor.core.errors import InvalidInputError
from mlharbor.core.loop import EstimatedPerformance
from mlharbor.monitoring.estimation import PerformanceEstimator, fit_estimator

SCORERS = {"accuracy": skm.accuracy_score, "precision": skm.precision_score,
           "recall": skm.recall_score, "f1": skm.f1_score}


def draw(rng: np.random.Generator, n: int, shift: float) -> tuple[Any, Any]:
    """x ~ N(shift, 1) per feature; y from the same logistic concept whatever the shift."""
    x = rng.normal(0.0, 1.0, size=(n, 2))
    x[:, 0] += shift
    logit = 2.0 * x[:, 0] + x[:, 1] - 3.0
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    return x, y


@pytest.fixture(scope="module")
def model_and_reference() -> tuple[LogisticRegression, Any, Any]:
    rng = np.random.default_rng(0)
    model = LogisticRegression().fit(*draw(rng, 4000, 0.0))
    x_ref, y_ref = draw(rng, 5000, 0.0)
    return model, x_ref, y_ref


def overconfident(model: LogisticRegression, x: Any) -> Any:
    """The same ranking as the model, probabilities pushed towards 0 and 1 (miscalibrated)."""
    p = 1.0 / (1.0 + np.exp(-3.0 * model.decision_function(x)))
    return np.column_stack([1.0 - p, p])


def within_stated_error(est: EstimatedPerformance, realised: float) -> bool:
    return abs(est.value - realised) <= 3 * est.standard_error + est.calibration_error


@pytest.mark.parametrize("calibrator", ["auto", "never"])
def test_cbpe_tracks_accuracy_under_covariate_shift(model_and_reference: Any,
                                                    calibrator: str) -> None:
    model, x_ref, y_ref = model_and_reference
    estimator = fit_estimator(y_ref, model.predict_proba(x_ref), calibrator=calibrator)
    assert estimator.check.calibrated and estimator.check.error <= 0.05
    reference_accuracy = float((model.predict(x_ref) == y_ref).mean())
    cbpe_errors, naive_errors, covered = [], [], 0
    for seed in range(8):
        x, y = draw(np.random.default_rng(100 + seed), 1000, 1.5)
        est = estimator.estimate(model.predict_proba(x))
        realised = float((model.predict(x) == y).mean())
        assert within_stated_error(est, realised), (seed, est, realised)
        covered += est.lower <= realised <= est.upper
        cbpe_errors.append(abs(est.value - realised))
        naive_errors.append(abs(reference_accuracy - realised))
        assert est.n == 1000 and est.metric == "accuracy"
        assert 0.005 < est.standard_error < 0.02  # ~ sqrt(p(1-p)/n) for n = 1000
    assert covered == 8
    # The shift moved accuracy: the reference's own accuracy would be off by several times more.
    assert np.mean(naive_errors) > 0.04
    assert np.mean(naive_errors) > 2.5 * np.mean(cbpe_errors)


def test_cbpe_binary_metrics_follow_the_expected_confusion_matrix(model_and_reference: Any
                                                                  ) -> None:
    model, x_ref, y_ref = model_and_reference
    estimator = fit_estimator(y_ref, model.predict_proba(x_ref))
    for seed in range(4):
        x, y = draw(np.random.default_rng(200 + seed), 1000, 1.5)
        proba, predicted = model.predict_proba(x), model.predict(x)
        for metric, score in SCORERS.items():
            est = estimator.estimate(proba, metric, predictions=predicted)
            assert within_stated_error(est, float(score(y, predicted))), (metric, seed, est)
            assert 0.0 <= est.lower <= est.value <= est.upper <= 1.0


def test_miscalibrated_scores_are_refused_unless_a_calibrator_is_allowed(
        model_and_reference: Any) -> None:
    model, x_ref, y_ref = model_and_reference
    proba = overconfident(model, x_ref)
    with pytest.raises(InvalidInputError, match=r"not calibrated.*calibrator='auto'") as err:
        fit_estimator(y_ref, proba, calibrator="never")
    assert err.value.details["raw_error"] > 0.05
    estimator = fit_estimator(y_ref, proba, calibrator="auto")
    assert estimator.check.calibrator == "isotonic"
    assert estimator.check.raw_error > 0.05 >= estimator.check.error
    reference_accuracy = float((model.predict(x_ref) == y_ref).mean())
    naive_worse = 0
    for seed in range(6):
        x, y = draw(np.random.default_rng(300 + seed), 1000, 1.5)
        est = estimator.estimate(overconfident(model, x))
        realised = float((model.predict(x) == y).mean())
        assert est.calibrator == "isotonic" and est.calibrated
        assert within_stated_error(est, realised), (seed, est, realised)
        naive_worse += abs(reference_accuracy - realised) > abs(est.value - realised)
    assert naive_worse == 6
    # Without the bound the miscalibrated estimate is still returned, but says so.
    loose = fit_estimator(y_ref, proba, calibrator="never", require_calibrated=False)
    assert not loose.estimate(proba).calibrated


def test_a_model_without_probabilities_is_refused(model_and_reference: Any) -> None:
    model, x_ref, y_ref = model_and_reference
    with pytest.raises(InvalidInputError, match="gives no class probabilities"):
        fit_estimator(y_ref, None)
    estimator = fit_estimator(y_ref, model.predict_proba(x_ref))
    with pytest.raises(InvalidInputError, match="gives no class probabilities"):
        estimator.estimate(None)


@pytest.mark.parametrize(("call", "message"), [
    (lambda y, p: fit_estimator(y, p[:, :1]), "one column per class"),
    (lambda y, p: fit_estimator(y[:-1], p), "labels but"),
    (lambda y, p: fit_estimator(y[:50], p[:50]), "at least 200"),
    (lambda y, p: fit_estimator(y, p * 2.0), r"within \[0, 1\]"),
    (lambda y, p: fit_estimator(y, p, calibrator="platt"), "Unknown calibrator"),
    (lambda y, p: fit_estimator(y, p, bound=1.5), "bound must be"),
    (lambda y, p: fit_estimator(y, p, classes=[0, 1], pos_label=2), "pos_label 2"),
    (lambda y, p: fit_estimator(y, p, classes=[1, 2]), "not in classes"),
    (lambda y, p: fit_estimator(y, p).estimate(p, "roc_auc"), "Cannot estimate 'roc_auc'"),
    (lambda y, p: fit_estimator(y, p).estimate(p[:0]), "no rows"),
    (lambda y, p: fit_estimator(y, p).estimate(p, confidence=1.0), "confidence must be"),
    (lambda y, p: fit_estimator(y, p).estimate(p, predictions=y[:3]), "3 predictions"),
    (lambda y, p: fit_estimator(y, p).estimate(p[:, ::-1] * 0 + [1.0, 0.0], "precision"),
     "no predicted positives"),
])
def test_bad_input_is_a_clear_error(model_and_reference: Any, call: Any, message: str) -> None:
    model, x_ref, y_ref = model_and_reference
    with pytest.raises(InvalidInputError, match=message):
        call(y_ref, model.predict_proba(x_ref))


def test_multiclass_accuracy_is_estimated_from_the_confidence() -> None:
    rng = np.random.default_rng(5)

    def draw3(n: int, shift: float) -> tuple[Any, Any]:
        x = rng.normal(shift, 1.0, size=(n, 2))
        logits = np.column_stack([x[:, 0], x[:, 1], -x[:, 0] - x[:, 1]]) * 1.5
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        y = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1)
        return x, np.array(["a", "b", "c"])[y]

    model = LogisticRegression().fit(*draw3(4000, 0.0))
    x_ref, y_ref = draw3(5000, 0.0)
    estimator = fit_estimator(y_ref, model.predict_proba(x_ref))
    assert estimator.classes == ("a", "b", "c") and estimator.metrics == ("accuracy",)
    for _ in range(4):
        x, y = draw3(1000, 0.8)
        est = estimator.estimate(model.predict_proba(x), predictions=model.predict(x))
        assert within_stated_error(est, float((model.predict(x) == y).mean())), est


def test_cbpe_is_unbiased_on_perfectly_calibrated_probabilities() -> None:
    """Labels drawn from the probabilities: the mean error over many windows is ~0."""
    rng = np.random.default_rng(11)
    p_ref = rng.beta(2.0, 2.0, 4000)
    estimator = fit_estimator((rng.random(4000) < p_ref).astype(int), p_ref,
                              calibrator="never")
    errors, ses = [], []
    for _ in range(300):
        p = rng.beta(3.0, 1.5, 500)  # shifted towards confident positives
        y = (rng.random(500) < p).astype(int)
        est = estimator.estimate(p)
        errors.append(est.value - float(((p >= 0.5) == y).mean()))
        ses.append(est.standard_error)
    # The mean of 300 independent errors with sd ~ SE has sd ~ SE / sqrt(300).
    assert abs(np.mean(errors)) <= 3 * np.mean(ses) / np.sqrt(300)
    # And the stated SE is the spread of the error, not a guess: within 15 %.
    assert np.std(errors) == pytest.approx(np.mean(ses), rel=0.15)


@pytest.fixture(scope="module")
def calibrated_estimator() -> PerformanceEstimator:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.0, 1.0, 2000)
    return fit_estimator((rng.random(2000) < p).astype(int), p, calibrator="auto")


@settings(derandomize=True, deadline=None, max_examples=60)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=300),
       st.sampled_from(["accuracy", "precision", "recall", "f1"]))
def test_estimates_are_within_0_and_1(calibrated_estimator: PerformanceEstimator,
                                      probabilities: list[float], metric: str) -> None:
    try:
        est = calibrated_estimator.estimate(np.asarray(probabilities), metric)
    except InvalidInputError as exc:  # precision/recall/F1 of a window with no positives
        assert "undefined" in str(exc)
        return
    assert 0.0 <= est.lower <= est.value <= est.upper <= 1.0
    assert est.standard_error >= 0.0 and est.calibration_error >= 0.0


@settings(derandomize=True, deadline=None, max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), a=st.floats(0.5, 5.0), b=st.floats(0.5, 5.0),
       shift_a=st.floats(0.5, 2.0), n=st.integers(100, 3000))
def test_calibrated_probabilities_give_an_estimate_within_its_stated_error(
        seed: int, a: float, b: float, shift_a: float, n: int) -> None:
    rng = np.random.default_rng(seed)
    p_ref = rng.beta(a, b, 3000)
    estimator = fit_estimator((rng.random(3000) < p_ref).astype(int), p_ref,
                              calibrator="never")
    p = rng.beta(a * shift_a, b, n)
    y = (rng.random(n) < p).astype(int)
    est = estimator.estimate(p)
    assert within_stated_error(est, float(((p >= 0.5) == y).mean())), est
