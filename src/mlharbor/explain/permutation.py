"""The model-agnostic fallback: Shapley values estimated by sampling feature orderings.

For one row ``x``, an ordering of the ``f`` input features and ``B`` background rows, the
model is asked ``f + 1`` questions per background row: all features from the background, then
the first feature of the ordering taken from ``x``, then the first two ... then all of them
(which is ``x`` itself). Each feature's contribution is the change in the mean output when it
joins. The contributions of one ordering telescope, so for *every* ordering they add up
exactly to ``f(x) - mean_b f(b)``: additivity holds whatever the sample, and only the split
between features is estimated. Orderings come in antithetic pairs (an ordering and its
reverse), which cancels much of the sampling error (Mitchell et al., 2022).

The sample budget is stated and bounded: at most ``budget`` model evaluations (rows) per
explained row, split as ``B`` background rows (at most :data:`MAX_BACKGROUND`) times
``2 P`` orderings of ``f + 1`` steps; the method name carries both numbers. Inputs are the
signature's columns, so preprocessing inside the model needs no mapping here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

DEFAULT_BUDGET = 20_000  # model evaluations (rows) per explained row
MAX_BACKGROUND = 50  # background rows used, at most
MAX_PAIRS = 16  # antithetic ordering pairs, at most


def plan(features: int, background: int, budget: int) -> tuple[int, int]:
    """(background rows, ordering pairs) that fit ``budget`` evaluations per explained row.

    At least one pair: a budget too small for one pair over all the background uses fewer
    background rows instead."""
    rows = max(1, min(background, MAX_BACKGROUND))
    per_pair = 2 * (features + 1)
    rows = max(1, min(rows, budget // per_pair))
    pairs = max(1, min(MAX_PAIRS, budget // (per_pair * rows)))
    return rows, pairs


def permutation_values(
    f: Callable[[Any], np.ndarray], x: Any, background: Any, *, frame: bool,
    budget: int = DEFAULT_BUDGET, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(base ``(n, k)``, values ``(n, features, k)``, method) for the rows of ``x``.

    ``f`` maps model input (a DataFrame when ``frame``, else a float matrix) to outputs
    ``(rows, k)``; ``x`` and ``background`` are already in that input form."""
    columns = list(x.columns) if frame else None
    x_cols = _columns(x, frame)
    bg_cols = _columns(background, frame)
    features = len(x_cols)
    n = len(x_cols[0]) if features else 0
    rows, pairs = plan(features, len(bg_cols[0]), budget)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(bg_cols[0]), size=rows, replace=False))
    bg_cols = [c[pick] for c in bg_cols]
    orders = []
    for _ in range(pairs):
        order = rng.permutation(features)
        orders.extend([order, order[::-1]])
    steps = features + 1
    # mask[p, s, j]: in ordering p at step s, feature j comes from x (it has joined).
    ranks = np.empty((len(orders), features), dtype=int)
    for p, order in enumerate(orders):
        ranks[p, order] = np.arange(features)
    mask = ranks[:, None, :] < np.arange(steps)[None, :, None]
    base_rows: list[np.ndarray] = []
    value_rows: list[np.ndarray] = []
    for i in range(n):
        built = []
        for j in range(features):
            chosen = np.where(mask[:, :, j][:, :, None], x_cols[j][i], bg_cols[j][None, None, :])
            built.append(chosen.reshape(-1))
        out = np.asarray(f(_assemble(built, columns, x, frame)), dtype=float)
        out = out.reshape(len(orders), steps, rows, -1).mean(axis=2)  # (P, steps, k)
        gains = np.diff(out, axis=1)  # gains[p, s]: feature orders[p][s] joining
        values = np.zeros((features, out.shape[-1]))
        for p, order in enumerate(orders):
            values[order] += gains[p]
        value_rows.append(values / len(orders))
        base_rows.append(out[0, 0])
    k = value_rows[0].shape[-1] if value_rows else 1
    method = (f"permutation ({2 * pairs} orderings x {rows} background rows, "
              f"{2 * pairs * steps * rows} evaluations per row)")
    return (np.asarray(base_rows).reshape(n, k),
            np.asarray(value_rows).reshape(n, features, k), method)


def _columns(data: Any, frame: bool) -> list[np.ndarray]:
    if frame:
        return [data[c].to_numpy() for c in data.columns]
    matrix = np.asarray(data, dtype=float)
    return [matrix[:, j] for j in range(matrix.shape[1])]


def _assemble(built: list[np.ndarray], columns: list[Any] | None, like: Any, frame: bool
              ) -> Any:
    if not frame:
        return np.column_stack(built)
    import pandas as pd

    return pd.DataFrame({c: pd.Series(v, dtype=like[c].dtype)
                         for c, v in zip(columns or [], built, strict=True)})
