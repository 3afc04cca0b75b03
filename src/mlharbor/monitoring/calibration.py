"""Thresholds calibrated to the window size, from the reference itself.

A fixed threshold (PSI > 0.2) alarms on every large window, because sampling noise shrinks with
size while a real but tiny difference does not; and it misses real drift in small windows. Here
the thresholds come from the distribution of each statistic when the window and the reference
come from the *same* distribution: both are redrawn from the reference bin proportions (a
parametric bootstrap, so the reference's own sampling error is accounted for), at each size of a
log grid from 100 to 1,000,000 rows, and interpolated in log-log space in between (past the
top, the reference's own noise dominates and the last threshold holds). Below the grid the
statistics are lumpy and follow no slope (extrapolating from the grid alarmed 6% of the time on
20-row windows), so a window is calibrated at its exact size, by the same simulation, the first
time that size is met (:meth:`Calibration.prepare`; kept with the calibration).

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
import zlib
from typing import Any

import numpy as np

from mlharbor.monitoring import statistics as st
from mlharbor.monitoring.reference import FeatureReference, Reference

GRID = tuple(round(10 ** e) for e in np.arange(2.0, 6.01, 0.5))  # 100 ... 1,000,000
GAUSSIAN_MIN_COUNT = 50
DRAWS = 10_000
ALGORITHM = 1  # bump when the statistics or the simulation change (invalidates caches)


#: The smallest threshold of a distribution test (PSI, JS, KS, scaled Wasserstein, ...).
MIN_THRESHOLD = 1e-3


@dataclasses.dataclass
class Calibration:
    """Per feature and test, the threshold at each grid size (``threshold`` interpolates),
    and at each exact size below the grid met so far (``exact``: feature -> rows -> test)."""

    alpha: float
    sizes: tuple[int, ...]
    thresholds: dict[str, dict[str, list[float]]]
    min_share_change: float
    digest: str = ""
    exact: dict[str, dict[str, dict[str, float]]] = dataclasses.field(default_factory=dict)
    draws: int = DRAWS
    seed: int = 0
    #: Exact sizes were added since the calibration was built or read (worth saving again).
    unsaved: bool = dataclasses.field(default=False, compare=False, repr=False)
    #: Per feature, the simulated reference draws the exact sizes share (not saved).
    _baselines: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False)

    def threshold(self, feature: str, test: str, n: int) -> float:
        """The threshold of ``test`` on ``n`` present rows of ``feature``; below the grid
        only for a size :meth:`prepare` simulated (LookupError otherwise)."""
        if n <= 0:
            return float("inf")
        if n < self.sizes[0]:
            exact = self.exact.get(feature, {}).get(str(n))
            if exact is None:
                raise LookupError(f"No threshold for {n} rows of {feature!r} yet: "
                                  "Calibration.prepare() simulates it.")
            value = float(exact[test])
        else:
            value = _interpolate(self.sizes, self.thresholds[feature][test], n)
        if test in ("missing", "unseen"):
            return max(value, self.min_share_change)
        # A feature the reference never varies (a constant column) simulates thresholds of 0:
        # any change is then drift, but its score (statistic / threshold) must stay a number a
        # person can read, not statistic / 1e-300. Below this no test's change matters.
        return max(value, MIN_THRESHOLD)

    def prepare(self, feature: FeatureReference, n: int) -> None:
        """Make sure :meth:`threshold` can answer for ``n`` rows of ``feature``: below the
        grid, simulate that exact size once (seeded by the size and the feature's name, so
        every process gets the same thresholds)."""
        if not 0 < n < self.sizes[0] or str(n) in self.exact.get(feature.name, {}):
            return
        name = zlib.crc32(feature.name.encode())
        baseline = self._baselines.get(feature.name)
        if baseline is None:
            baseline = _simulated_reference(np.random.default_rng([self.seed, name]), feature,
                                            self.draws)
            self._baselines[feature.name] = baseline
        rng = np.random.default_rng([self.seed, name, n])
        z_window = rng.standard_normal((self.draws, len(feature.counts)))
        values = _thresholds(feature, self.alpha, rng, z_window, baseline, (n,))
        self.exact.setdefault(feature.name, {})[str(n)] = {t: v[0] for t, v in values.items()}
        self.unsaved = True

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": ALGORITHM, "alpha": self.alpha, "sizes": list(self.sizes),
                "thresholds": self.thresholds, "min_share_change": self.min_share_change,
                "digest": self.digest, "exact": self.exact, "draws": self.draws,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration | None:
        if data.get("algorithm") != ALGORITHM:
            return None
        return cls(float(data["alpha"]), tuple(data["sizes"]), data["thresholds"],
                   float(data["min_share_change"]), str(data.get("digest", "")),
                   dict(data.get("exact") or {}), int(data.get("draws", DRAWS)),
                   int(data.get("seed", 0)))


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
        name: _feature_thresholds(feature, alpha, draws, seed + i, GRID)
        for i, (name, feature) in enumerate(features.items())
    }
    return Calibration(alpha, GRID, thresholds, min_share_change, reference.digest,
                       draws=draws, seed=seed)


def _feature_thresholds(feature: FeatureReference, alpha: float, draws: int, seed: int,
                        sizes: tuple[int, ...]) -> dict[str, list[float]]:
    """Per test, the threshold at each of ``sizes`` (present rows of a window)."""
    rng = np.random.default_rng(seed)
    z_window = rng.standard_normal((draws, len(feature.counts)))
    baseline = _simulated_reference(rng, feature, draws)
    return _thresholds(feature, alpha, rng, z_window, baseline, sizes)


def _simulated_reference(rng: np.random.Generator, feature: FeatureReference, draws: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``draws`` redraws of the reference: bin counts and missing rows (shared by every size,
    so the thresholds vary smoothly with the size)."""
    p = st.proportions(feature.counts)
    reference = _draw(rng, int(feature.counts.sum()), p, draws,
                      rng.standard_normal((draws, len(p))))
    miss_p = feature.missing / max(feature.rows, 1)
    return reference, rng.binomial(feature.rows, miss_p, size=draws)


def _thresholds(feature: FeatureReference, alpha: float, rng: np.random.Generator,
                z_window: np.ndarray, baseline: tuple[np.ndarray, np.ndarray],
                sizes: tuple[int, ...]) -> dict[str, list[float]]:
    tests = tests_for(feature)
    draws = len(z_window)
    p = st.proportions(feature.counts)
    reference, ref_missing = baseline
    miss_p = feature.missing / max(feature.rows, 1)
    binned = tuple(t for t in tests if t != "missing")
    out: dict[str, list[float]] = {t: [] for t in tests}
    for n in sizes:
        window = _draw(rng, n, p, draws, z_window)
        stats = st.scores(binned, window, reference, points=feature.points,
                          scale=feature.scale)
        total = round(n / max(1.0 - miss_p, 1e-9))  # the size counts present rows
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
    # Past the grid's top the last threshold holds: the reference's own noise stays.
    return float(np.exp(np.interp(np.log(float(n)), logs, vals)))
