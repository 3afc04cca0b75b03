"""Which input column each column a preprocessor outputs came from, so attributions computed
on the model's own (transformed) columns can be reported in the signature's feature names.

A model served by mlharbor is usually a scikit-learn ``Pipeline``: preprocessing steps, then
an estimator. TreeSHAP and the linear rule explain the estimator on the columns it sees, which
are not the signature's: one-hot encoding turns ``contract`` into ``contract_month-to-month``,
``contract_one-year`` ...; date parts turn ``signup`` into year, month, day. Attributions are
additive, so the attribution of an input column is the **sum** of the attributions of every
transformed column made from it alone (Lundberg and Lee's rule for grouped features); the sum
over all features, and so the additivity check, is unchanged by the grouping.

The mapping is read from the fitted structure, never guessed from output names:

* a ``ColumnTransformer`` knows each transformer's input columns and output slice
  (``output_indices_``); a dropped remainder outputs nothing (its columns get zero);
* inside a transformer (or a ``Pipeline`` of them): element-wise steps (scalers, imputers
  without indicators, ordinal encoders, ``passthrough``) keep one output per input;
  ``OneHotEncoder`` outputs ``_n_features_outs[i]`` columns for input ``i``; mlharbor's
  ``DateParts`` one per part; any step over a single input column maps everything to it.

A step that mixes columns (PCA, polynomial features, user feature functions) has no such map:
:func:`source_columns` returns None and the caller explains the whole pipeline model-agnostically
in the input columns instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Transformers whose output column i depends on input column i only.
ELEMENTWISE = frozenset({
    "StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler", "OrdinalEncoder",
    "PowerTransformer", "QuantileTransformer", "Binarizer",
})


def source_columns(steps: Sequence[Any], names: Sequence[str]) -> list[int] | None:
    """For each column the fitted ``steps`` output, the index in ``names`` of the input column
    it was made from; None when a step mixes columns (see the module docstring)."""
    mapping: list[int] | None = list(range(len(names)))
    for step in steps:
        if mapping is None:
            return None
        if _is_column_transformer(step):
            if mapping != list(range(len(names))):
                return None  # a ColumnTransformer after a step that renamed columns
            mapping = _column_transformer(step, names)
        else:
            widths = _widths(step, len(mapping))
            if widths is None:
                return None
            mapping = [m for m, w in zip(mapping, widths, strict=True) for _ in range(w)]
    return mapping


def grouping(mapping: Sequence[int], n_inputs: int) -> np.ndarray:
    """The ``(transformed, inputs)`` 0/1 matrix summing transformed columns into inputs."""
    matrix = np.zeros((len(mapping), n_inputs))
    matrix[np.arange(len(mapping)), np.asarray(mapping, dtype=int)] = 1.0
    return matrix


def _is_column_transformer(step: Any) -> bool:
    return type(step).__name__ == "ColumnTransformer" and hasattr(step, "output_indices_")


def _column_transformer(ct: Any, names: Sequence[str]) -> list[int] | None:
    index = {name: i for i, name in enumerate(names)}
    width = max((s.stop for s in ct.output_indices_.values()), default=0)
    mapping: list[int | None] = [None] * width
    for name, trans, cols in ct.transformers_:
        out = ct.output_indices_.get(name)
        if out is None or out.stop == out.start or trans == "drop":
            continue
        sources = _resolve(cols, names, index)
        if sources is None:
            return None
        widths = _widths(trans, len(sources))
        if widths is None or sum(widths) != out.stop - out.start:
            return None
        expanded = [s for s, w in zip(sources, widths, strict=True) for _ in range(w)]
        mapping[out.start:out.stop] = expanded
    if any(m is None for m in mapping):
        return None
    return [int(m) for m in mapping if m is not None]


def _resolve(cols: Any, names: Sequence[str], index: dict[str, int]) -> list[int] | None:
    """Column selections (names, positions, boolean masks, one name) as input positions."""
    if isinstance(cols, str | int | np.integer):
        cols = [cols]
    values = list(np.asarray(cols).tolist()) if not isinstance(cols, list) else list(cols)
    if values and all(isinstance(v, bool) for v in values):
        return [i for i, v in enumerate(values) if v]
    found = []
    for value in values:
        if isinstance(value, str) and value in index:
            found.append(index[value])
        elif isinstance(value, int) and 0 <= value < len(names):
            found.append(value)
        else:
            return None
    return found


def _widths(step: Any, n_in: int) -> list[int] | None:
    """Output columns per input column of one fitted step; None when it mixes columns."""
    if step == "passthrough" or step is None:
        return [1] * n_in
    kind = type(step).__name__
    if kind == "Pipeline":
        widths = [1] * n_in
        for _name, inner in step.steps:
            inner_widths = _widths(inner, sum(widths))
            if inner_widths is None:  # one input: everything comes from it, if countable
                width = _out_width(step, n_in) if n_in == 1 else -1
                return None if width < 0 else [width]
            # compose: each current column expands into inner_widths of its own
            position, composed = 0, []
            for w in widths:
                composed.append(sum(inner_widths[position:position + w]))
                position += w
            widths = composed
        return widths
    if kind == "OneHotEncoder" and hasattr(step, "_n_features_outs"):
        return [int(w) for w in step._n_features_outs]
    if kind == "DateParts":
        return [len(step.parts)] * n_in
    if kind == "SimpleImputer" and getattr(step, "indicator_", None) is None:
        return [1] * n_in
    if kind == "KBinsDiscretizer" and getattr(step, "encode", "") == "ordinal":
        return [1] * n_in
    if kind in ELEMENTWISE:
        return [1] * n_in
    if n_in == 1:  # whatever it does, everything comes from the one input
        width = _out_width(step, n_in)
        return None if width < 0 else [width]
    return None


def _out_width(step: Any, n_in: int) -> int:
    """The number of columns a fitted step outputs (-1 when it cannot say)."""
    try:
        return len(step.get_feature_names_out([f"x{i}" for i in range(n_in)]))
    except Exception:  # a step without output names: unknown width, no mapping
        return -1
