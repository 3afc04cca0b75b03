"""The record an explainer returns: per-row, per-feature attributions and the base value.

Shapes, for ``n`` rows, ``f`` features (the signature's input columns) and ``k`` outputs:

* ``values`` is ``(n, f, k)``: how much each feature moved each output away from the base;
* ``base_values`` is ``(n, k)``: the output expected before any feature is known (the same
  for every row for every method here, kept per row because other methods differ per row).

The contract every explainer keeps, and its tests check: for every row and output,
``base_values + values.sum(axis=1)`` equals the model's output in :attr:`Attributions.space`
(within floating-point tolerance). The outputs are:

* a binary classifier: one output, the positive class (``classes[1]``);
* a multi-class classifier: one output per class, in the order of ``classes``;
* a regressor: one output, the prediction.

and the space is ``probability`` (``predict_proba``), ``margin`` (the raw score before the
link function: log-odds for a binary logistic model, per-class scores before the softmax,
what ``decision_function`` / ``output_margin=True`` / ``raw_score=True`` answer), or
``value`` (a regressor's prediction).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SPACES = ("probability", "margin", "value")


@dataclasses.dataclass(frozen=True)
class Attributions:
    """Attributions of ``n`` rows (see the module docstring for shapes and the contract)."""

    base_values: np.ndarray
    values: np.ndarray
    feature_names: tuple[str, ...]
    output_names: tuple[str, ...]
    space: str
    method: str

    def __post_init__(self) -> None:
        n, f, k = self.values.shape
        if self.base_values.shape != (n, k) or len(self.feature_names) != f \
                or len(self.output_names) != k or self.space not in SPACES:
            raise ValueError(  # a programming error in an explainer, never user input
                f"Inconsistent attributions: values {self.values.shape}, base "
                f"{self.base_values.shape}, {len(self.feature_names)} features, "
                f"{len(self.output_names)} outputs, space {self.space!r}.")

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def output_name(self) -> str:
        """What is explained, in words: ``probability of class 'yes'``, ``margin ...``."""
        if self.space == "value":
            return "predicted value"
        what = "probability" if self.space == "probability" else "margin (raw score)"
        names = ", ".join(repr(o) for o in self.output_names)
        return f"{what} of class {names}" if len(self.output_names) == 1 \
            else f"{what} of each class ({names})"

    def outputs(self) -> np.ndarray:
        """``base_values + values.sum(axis=1)``: the model output the attributions add up to."""
        total: np.ndarray = self.base_values + self.values.sum(axis=1)
        return total

    def mean_abs(self) -> dict[str, float]:
        """Each feature's mean |attribution| over the rows, summed over the outputs: the
        global importance that attribution drift compares between two sets of rows."""
        if self.rows == 0:
            return {name: 0.0 for name in self.feature_names}
        per_feature = np.abs(self.values).mean(axis=0).sum(axis=1)
        return {name: float(v) for name, v in zip(self.feature_names, per_feature, strict=True)}

    def to_rows(self) -> list[dict[str, Any]]:
        """One JSON-safe dict per row: for each output, its base value, the output the
        attributions sum to, and the attribution of each feature."""
        totals = self.outputs()
        rows = []
        for i in range(self.rows):
            rows.append({out: {
                "base_value": float(self.base_values[i, j]),
                "output": float(totals[i, j]),
                "attributions": {name: float(self.values[i, f, j])
                                 for f, name in enumerate(self.feature_names)},
            } for j, out in enumerate(self.output_names)})
        return rows

    def describe(self) -> dict[str, Any]:
        """What every answer states besides the rows: method, space, features, outputs."""
        return {"method": self.method, "space": self.space, "output": self.output_name,
                "outputs": list(self.output_names), "features": list(self.feature_names)}
