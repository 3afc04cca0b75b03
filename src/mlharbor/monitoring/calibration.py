"""Thresholds calibrated to the window size, from the reference itself.

A fixed threshold (PSI > 0.2) alarms on every large window, because sampling noise shrinks with
size while a real but tiny difference does not; and it misses real drift in small windows. Here
the thresholds come from the distribution of each statistic when the window and the reference
come from the *same* distribution: both are redrawn from the reference bin proportions (a
parametric bootstrap, so the reference's own sampling error is accounted for), at each size of a
log grid from 100 to 1,000,000 rows, and interpolated in log-log space in between.

A feature alarms when *any* of its tests passes its threshold, so the thresholds are set
jointly: every test gets the same tail level ``gamma``, chosen so that the share of simulated
windows where at least one test passes is ``alpha``. That is the per-feature false-alarm rate
(the tests are strongly correlated, so ``gamma`` is well above Bonferroni's ``alpha / tests``,
which keeps power).

Draws are exact multinomials where a bin expects fewer than :data:`GAUSSIAN_MIN_COUNT` rows and
the multinomial's Gaussian limit (same mean and covariance) elsewhere; the Gaussian draws share
one set of normal deviates across sizes, so the thresholds vary smoothly with the size.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mlharbor.monitoring import statistics as st
from mlharbor.monitoring.reference import FeatureReference, Reference

GRID = tuple(round(10 ** e) for e in np.arange(2.0, 6.01, 0.5))  # 100 ... 1,000,000
GAUSSIAN_MIN_COUNT = 50
DRAWS = 10_000
ALGORITHM = 1  # bump when the statistics or the simulation change (invalidates caches)


@dataclasses.dataclass
class Calibration:
    """Per feature and test, the threshold at each grid size; ``threshold`` interpolates."""

    alpha: float
    sizes: tuple[int, ...]
    thresholds: dict[str, dict[str, list[float]]]
    min_share_change: float
    digest: str = ""

    def threshold(self, feature: str, test: str, n: int) -> float:
        values = self.thresholds[feature][test]
        if test in ("missing", "unseen"):
            return max(_interpolate(self.sizes, values, n), self.min_share_change)
        return _interpolate(self.sizes, values, n)

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": ALGORITHM, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration | None:
        if data.get("algorithm") != ALGORITHM:
            return None
        return cls(float(data["alpha"]), tuple(data["sizes"]), data["thresholds"],
                   float(data["min_share_change"]), str(data.get("digest", "")))


def tests_for(feature: FeatureReference) -> tuple[str, ...]:
    base = st.NUMERIC_TESTS if feature.numeric else st.CATEGORICAL_TESTS
    return (*base, "missing")


def calibrate(reference: Reference, *, alpha: float = 0.002, min_share_change: float = 0.01,
              draws: int = DRAWS, seed: int = 0) -> Calibration:
    """Thresholds for every feature (and the predictions) of ``reference``."""
    features = dict(reference.features)
    if reference.prediction is not None:
        features[reference.prediction.name] = reference.prediction
    thresholds = {
        name: _feature_thresholds(feature, alpha, draws, seed + i)
        for i, (name, feature) in enumerate(features.items())
    }
    return Calibration(alpha, GRID, thresholds, min_share_change, reference.digest)


def _feature_thresholds(feature: FeatureReference, alpha: float, draws: int,
                        seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    tests = tests_for(feature)
    m = int(feature.counts.sum())
    p = st.proportions(feature.counts)
    z_window = rng.standard_normal((draws, len(p)))
    reference = _draw(rng, m, p, draws, rng.standard_normal((draws, len(p))))
    miss_p = feature.missing / max(feature.rows, 1)
    ref_missing = rng.binomial(feature.rows, miss_p, size=draws)
    binned = tuple(t for t in tests if t != "missing")
    out: dict[str, list[float]] = {t: [] for t in tests}
    for n in GRID:
        window = _draw(rng, n, p, draws, z_window)
        stats = st.scores(binned, window, reference, points=feature.points,
                          scale=feature.scale)
        total = round(n / max(1.0 - miss_p, 1e-9))  # the grid size counts present rows
        w_missing = rng.binomial(total, miss_p, size=draws)
        stats["missing"] = st.share_difference(w_missing, total, ref_missing, feature.rows)
        gamma = _joint_level([stats[t] for t in tests], alpha)
        for test in tests:
            out[test].append(float(np.quantile(stats[test], 1.0 - gamma)))
    return out


def _joint_level(stats: list[np.ndarray], alpha: float) -> float:
    """The per-test tail level at which a share ``alpha`` of draws passes at least one test."""
    draws = len(stats[0])
    smallest = np.ones(draws)
    for values in stats:
        ordered = np.sort(values)
        # Share of draws at least this large: the draw's empirical upper-tail p-value.
        tail = (draws - np.searchsorted(ordered, values, side="left")) / draws
        smallest = np.minimum(smallest, tail)
    return float(max(np.quantile(smallest, alpha), 1.0 / draws))


def _draw(rng: np.random.Generator, n: int, p: np.ndarray, draws: int,
          z: np.ndarray) -> np.ndarray:
    """``draws`` count vectors of ``n`` rows over proportions ``p``."""
    positive = p[p > 0]
    if len(positive) == 0 or n <= 0:
        return np.zeros((draws, len(p)))
    if n * positive.min() < GAUSSIAN_MIN_COUNT:
        exact: np.ndarray = rng.multinomial(n, p, size=draws).astype(float)
        return exact
    root = np.sqrt(p)
    noise = root * z - p * (z @ root)[:, None]
    approx: np.ndarray = np.clip(n * p + np.sqrt(n) * noise, 0.0, None)
    return approx


def _interpolate(sizes: tuple[int, ...], values: list[float], n: int) -> float:
    if n <= 0:
        return float("inf")
    logs = np.log(np.asarray(sizes, dtype=float))
    vals = np.log(np.maximum(np.asarray(values, dtype=float), 1e-300))
    x = np.log(float(n))
    if x <= logs[0]:
        # Below the grid, noise shrinks like 1 / n (squared statistics) or 1 / sqrt(n):
        # extrapolate along the first segment's slope, which is at least as conservative.
        slope = (vals[1] - vals[0]) / (logs[1] - logs[0])
        return float(np.exp(vals[0] + slope * (x - logs[0])))
    return float(np.exp(np.interp(x, logs, vals)))
