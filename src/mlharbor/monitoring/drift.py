"""Drift of a window against the reference: per-feature tests, dataset and prediction drift.

Per feature, on the reference's bins: numeric features get PSI, Jensen-Shannon, KS and the
normalised Wasserstein distance; categorical features Jensen-Shannon and chi-square, with the
share of categories the reference never saw checked separately (``unseen``); every feature gets
a missing-share check. Each test has a threshold calibrated to the window size
(:mod:`mlharbor.monitoring.calibration`); a feature drifts when any test passes its threshold,
and its ``score`` is the largest statistic / threshold ratio (above 1 means drift).

Dataset drift weighs features by their importance: ``drifted_share`` is the importance-weighted
share of drifted features, and the dataset drifts when it reaches ``dataset_share`` (or when
the predictions drift).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mlharbor.monitoring import statistics as st
from mlharbor.monitoring.calibration import Calibration, calibrate
from mlharbor.monitoring.reference import PREDICTION, FeatureReference, Reference
from mlharbor.monitoring.windows import FeatureCounts, WindowCounts, count_window, merge_all


@dataclasses.dataclass(frozen=True)
class TestResult:
    test: str
    statistic: float
    threshold: float

    @property
    def drifted(self) -> bool:
        return self.statistic > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"test": self.test, "statistic": self.statistic, "threshold": self.threshold,
                "drifted": self.drifted}


@dataclasses.dataclass(frozen=True)
class FeatureDrift:
    name: str
    kind: str
    rows: int
    importance: float
    tests: tuple[TestResult, ...]
    missing_share: float
    reference_missing_share: float
    unseen_share: float
    unseen_values: dict[str, int]

    @property
    def drifted(self) -> bool:
        return any(t.drifted for t in self.tests)

    @property
    def score(self) -> float:
        ratios = [t.statistic / t.threshold if t.threshold > 0 else (
            float("inf") if t.statistic > 0 else 0.0) for t in self.tests]
        return max(ratios, default=0.0)

    @property
    def drifted_tests(self) -> list[str]:
        return [t.test for t in self.tests if t.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "rows": self.rows,
                "importance": self.importance, "drifted": self.drifted,
                "score": _finite(self.score), "drifted_tests": self.drifted_tests,
                "tests": [t.to_dict() for t in self.tests],
                "missing_share": self.missing_share,
                "reference_missing_share": self.reference_missing_share,
                "unseen_share": self.unseen_share, "unseen_values": self.unseen_values}


@dataclasses.dataclass(frozen=True)
class DriftReport:
    """What monitoring hands to pipelines: per-feature scores and thresholds, verdict, window."""

    rows: int
    start: str | None
    end: str | None
    features: tuple[FeatureDrift, ...]  # most drifted first
    prediction: FeatureDrift | None
    drifted_share: float
    dataset_share: float
    alpha: float

    @property
    def drifted(self) -> bool:
        prediction = self.prediction is not None and self.prediction.drifted
        return prediction or (self.drifted_share >= self.dataset_share and self.drifted_share > 0)

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": {"start": self.start, "end": self.end, "rows": self.rows},
            "dataset": {"drifted": self.drifted, "drifted_share": self.drifted_share,
                        "threshold_share": self.dataset_share,
                        "drifted_features": self.drifted_features,
                        "features": len(self.features)},
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "features": [f.to_dict() for f in self.features],
            "false_alarm_rate_per_feature": self.alpha,
        }


class DriftEngine:
    """Compares windows with one reference; calibrates once (pass a cached calibration)."""

    def __init__(self, reference: Reference, calibration: Calibration | None = None, *,
                 alpha: float = 0.002, min_share_change: float = 0.01,
                 dataset_share: float = 0.3) -> None:
        self.reference = reference
        self.calibration = calibration or calibrate(
            reference, alpha=alpha, min_share_change=min_share_change)
        self.dataset_share = dataset_share

    def count(self, data: Any, *, predictions: Any = None, **window: Any) -> WindowCounts:
        return count_window(self.reference, data, predictions=predictions, **window)

    def run(self, data: Any, *, predictions: Any = None) -> DriftReport:
        """Count ``data`` and compare it: the one-call form."""
        return self.compare(self.count(data, predictions=predictions))

    def compare_recent(self, windows: list[WindowCounts]) -> DriftReport:
        """The last window, confirmed on the last windows merged (``windows`` oldest first).

        A shift too small to be sure of in one window is usually clear in two: each feature
        keeps whichever of the two evaluations (last window alone, merged) scores higher. Both
        are calibrated, so the false-alarm rate stays below twice ``alpha``.
        """
        last = self.compare(windows[-1])
        if len(windows) < 2:
            return last
        merged = self.compare(merge_all(windows))  # type: ignore[arg-type]
        by_name = {f.name: f for f in merged.features}
        features = sorted((max(f, by_name[f.name], key=lambda d: d.score) for f in last.features),
                          key=lambda f: (f.drifted, f.score), reverse=True)
        prediction = last.prediction
        if merged.prediction is not None and (
                prediction is None or merged.prediction.score > prediction.score):
            prediction = merged.prediction
        weights = {f.name: f.importance for f in features}
        total = sum(weights.values())
        share = sum(weights[f.name] for f in features if f.drifted) / total if total else 0.0
        return dataclasses.replace(last, features=tuple(features), prediction=prediction,
                                   drifted_share=share, start=merged.start)

    def compare(self, window: WindowCounts) -> DriftReport:
        ref = self.reference
        features = [self._feature(f, window.features.get(name))
                    for name, f in ref.features.items()]
        prediction = None
        if ref.prediction is not None and PREDICTION in window.features:
            prediction = self._feature(ref.prediction, window.features[PREDICTION])
        weights = {f.name: f.importance for f in features}
        total = sum(weights.values())
        drifted = sum(weights[f.name] for f in features if f.drifted)
        features.sort(key=lambda f: (f.drifted, f.score), reverse=True)
        return DriftReport(
            rows=window.rows,
            start=window.start.isoformat() if window.start else None,
            end=window.end.isoformat() if window.end else None,
            features=tuple(features), prediction=prediction,
            drifted_share=drifted / total if total > 0 else 0.0,
            dataset_share=self.dataset_share, alpha=self.calibration.alpha,
        )

    def _feature(self, ref: FeatureReference, counts: FeatureCounts | None) -> FeatureDrift:
        if counts is None:
            counts = FeatureCounts(ref.counts * 0)
        cal, name = self.calibration, ref.name
        tests: list[TestResult] = []
        n = counts.present
        if counts.rows:  # a window under the calibration grid is calibrated at its size
            cal.prepare(ref, max(n, 1))
        binned = st.NUMERIC_TESTS if ref.numeric else st.CATEGORICAL_TESTS
        if n > 0:
            stats = st.scores(binned, counts.counts, ref.counts, points=ref.points,
                              scale=ref.scale)
            tests += [TestResult(t, float(stats[t]), cal.threshold(name, t, n)) for t in binned]
        rows = counts.rows
        ref_missing = ref.missing / ref.rows if ref.rows else 0.0
        missing = counts.missing / rows if rows else 0.0
        if rows:
            tests.append(TestResult("missing", abs(missing - ref_missing),
                                    cal.threshold(name, "missing", max(n, 1))))
        unseen = counts.unseen / (n + counts.unseen) if n + counts.unseen else 0.0
        if not ref.numeric and not ref.has_other and n + counts.unseen:
            tests.append(TestResult("unseen", unseen, cal.min_share_change))
        importance = self.reference.weight(name) if name != PREDICTION else 0.0
        return FeatureDrift(name, ref.kind, rows, importance, tuple(tests), missing,
                            ref_missing, unseen, counts.unseen_values)


def _finite(value: float) -> float | None:
    return value if value != float("inf") else None
