"""Drift statistics on bin counts fixed on the reference, vectorised over many windows.

Every function takes window counts ``w`` of shape ``(..., k)`` and reference counts ``r`` of
shape ``(..., k)`` (broadcast against each other) and returns one value per leading index, so
the calibration can score tens of thousands of simulated windows in one call. Counts, not raw
values: a window is summarised once into counts, and windows merge by adding counts.

Names follow the house rule: larger means more drift for every statistic here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Additive smoothing for the logarithms of PSI (half a count per bin, Jeffreys' prior), on the
# bins that the window or the reference uses. A bin empty in both (a value the reference never
# had, see mlharbor.data.profile) carries no information; smoothing it anyway would give two
# identical samples of different sizes a PSI above 0 (on a constant column, with no noise for
# the calibration to absorb, a false alarm).
PSEUDO_COUNT = 0.5

NUMERIC_TESTS = ("psi", "jensen_shannon", "ks", "wasserstein")
CATEGORICAL_TESTS = ("jensen_shannon", "chi_square", "category_share")


def proportions(counts: Any) -> np.ndarray:
    c = np.asarray(counts, dtype=float)
    total = c.sum(axis=-1, keepdims=True)
    out: np.ndarray = c / np.where(total > 0, total, 1.0)
    return out


def chi_square(w: Any, r: Any) -> np.ndarray:
    """Pearson's chi-square statistic of homogeneity for the 2 x k table (window, reference)."""
    w = np.asarray(w, dtype=float)
    r = np.asarray(r, dtype=float)
    w, r = np.broadcast_arrays(w, r)
    n = w.sum(axis=-1, keepdims=True)
    m = r.sum(axis=-1, keepdims=True)
    column = w + r
    total = n + m
    stat = np.zeros(w.shape[:-1])
    for observed, size in ((w, n), (r, m)):
        expected = column * np.divide(size, total, out=np.zeros_like(size), where=total > 0)
        stat = stat + np.sum(
            np.divide((observed - expected) ** 2, expected, out=np.zeros_like(expected),
                      where=expected > 0), axis=-1)
    return stat


def share_difference(w_hits: Any, w_total: Any, r_hits: Any, r_total: Any) -> np.ndarray:
    """Absolute difference of two shares (missing values, unseen categories)."""
    def share(hits: Any, total: Any) -> np.ndarray:
        h, t = np.asarray(hits, dtype=float), np.asarray(total, dtype=float)
        out: np.ndarray = np.divide(h, t, out=np.zeros(np.broadcast(h, t).shape), where=t > 0)
        return out

    difference: np.ndarray = np.abs(share(w_hits, w_total) - share(r_hits, r_total))
    return difference


def scores(tests: tuple[str, ...], w: Any, r: Any, *, points: Any = None,
           scale: float = 1.0) -> dict[str, np.ndarray]:
    """Each statistic named in ``tests``, sharing the proportions and CDF differences.

    Same values as the single functions above; this is the path used on hot loops.
    """
    w = np.asarray(w, dtype=float)
    r = np.asarray(r, dtype=float)
    n = w.sum(axis=-1, keepdims=True)
    m = r.sum(axis=-1, keepdims=True)
    q = w / np.where(n > 0, n, 1.0)
    p = r / np.where(m > 0, m, 1.0)
    out: dict[str, np.ndarray] = {}
    if "psi" in tests:
        used = (w + r) > 0
        k = np.maximum(used.sum(axis=-1, keepdims=True), 1)
        qs = (w + PSEUDO_COUNT) / (n + PSEUDO_COUNT * k)
        ps = (r + PSEUDO_COUNT) / (m + PSEUDO_COUNT * k)
        out["psi"] = np.sum(np.where(used, (qs - ps) * np.log(qs / ps), 0.0), axis=-1)
    if "jensen_shannon" in tests:
        mid = 0.5 * (q + p)
        safe = np.where(mid > 0, mid, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(q > 0, q * np.log2(np.where(q > 0, q, 1.0) / safe), 0.0)
            terms += np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0) / safe), 0.0)
        out["jensen_shannon"] = np.sqrt(np.clip(0.5 * terms.sum(axis=-1), 0.0, None))
    if "ks" in tests or "wasserstein" in tests:
        gap = np.abs(np.cumsum(q - p, axis=-1))
        if "ks" in tests:
            out["ks"] = gap.max(axis=-1)
        if "wasserstein" in tests:
            widths = np.diff(np.asarray(points, dtype=float))
            out["wasserstein"] = gap[..., :-1] @ widths / (scale if scale > 0 else 1.0)
    if "chi_square" in tests:
        out["chi_square"] = chi_square(w, r)
    if "category_share" in tests:
        # Largest two-proportion z score over categories: sharper than chi-square when one
        # category's share moves, the common case (a new campaign, a broken upstream field).
        pooled = (w + r) / np.where(n + m > 0, n + m, 1.0)
        spread = np.sqrt(pooled * (1 - pooled) * (1 / np.maximum(n, 1) + 1 / np.maximum(m, 1)))
        z = np.divide(np.abs(q - p), spread, out=np.zeros_like(spread), where=spread > 0)
        out["category_share"] = z.max(axis=-1)
    return out


def score(test: str, w: Any, r: Any, *, points: Any = None, scale: float = 1.0) -> np.ndarray:
    """One statistic of :data:`NUMERIC_TESTS` or :data:`CATEGORICAL_TESTS`."""
    if test not in (*NUMERIC_TESTS, *CATEGORICAL_TESTS):
        raise ValueError(f"unknown drift test {test!r}")
    return scores((test,), w, r, points=points, scale=scale)[test]
