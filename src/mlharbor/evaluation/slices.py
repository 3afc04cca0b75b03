"""Slice metrics: every holdout metric on named subsets of rows, with its bootstrap confidence
interval and sample size, and the slices where the model is much worse than overall flagged.

A recipe names slices three ways (``slices:`` in the recipe)::

    - column: contract                          one slice per value: contract=month-to-month
    - column: tenure_months, bins: [12, 24]     tenure_months=(-inf, 12), =[12, 24), =[24, inf)
    - name: new_monthly                         the rows a filter selects (sliceexpr grammar)
      where: "contract == 'month-to-month' and tenure_months < 6"

Missing values of a sliced column form their own slice (``column=missing``).

**The flag rule** (:data:`FLAG_RULE`), on the primary metric: a slice with at least
:data:`MIN_ROWS` rows is flagged when its whole 95% interval lies on the worse side of the
overall holdout value (so the gap is not sampling noise) AND its point value is worse by more
than :data:`MARGIN` (absolute for scores in 0..1; relative, 5%, for errors and losses) — a gap
big enough to matter. Smaller slices are reported and marked too small to judge.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from mlharbor.core.errors import ConfigError
from mlharbor.evaluation.gates import Gate, SliceEvidence, slice_key
from mlharbor.evaluation.metrics import LOWER_IS_BETTER, Target
from mlharbor.evaluation.sliceexpr import Expr, columns_of, parse_filter, render, select

MIN_ROWS = 30
MARGIN = 0.05
#: A categorical column sliced into more values than this keeps the largest ones.
MAX_LEVELS = 50
FLAG_RULE = (
    f"flagged when the slice has at least {MIN_ROWS} rows, its 95% interval of the primary "
    f"metric lies entirely on the worse side of the overall holdout value, and its value is "
    f"worse by more than {MARGIN} (absolute; {MARGIN:.0%} relative for errors and losses)")


@dataclasses.dataclass(frozen=True)
class SliceSpec:
    """One way of cutting the rows: by a column's values, a column's bins, or a filter."""

    column: str | None = None
    bins: tuple[float, ...] | None = None
    name: str | None = None
    where: Expr | None = None

    @property
    def label(self) -> str:
        if self.where is not None:
            return f"{self.name}: {render(self.where)}"
        return f"{self.column} (bins)" if self.bins else str(self.column)

    def columns(self) -> set[str]:
        return columns_of(self.where) if self.where is not None else {str(self.column)}

    def groups(self, frame: Any) -> list[tuple[str, Any]]:
        """``(key, boolean mask)`` per slice, in a stable order."""
        if self.where is not None:
            return [(str(self.name), select(self.where, frame))]
        column = str(self.column)
        if column not in frame.columns:
            known = ", ".join(map(str, frame.columns[:30]))
            raise ConfigError(f"The slice column {column!r} is not in the data; columns: "
                              f"{known}.", field="slices")
        series = frame[column]
        if self.bins:
            return _binned(column, series, self.bins)
        return _levels(column, series)

    def capped_groups(self, frame: Any) -> tuple[list[tuple[str, Any]], str | None]:
        """:meth:`groups`, keeping a column's :data:`MAX_LEVELS` largest values (a report
        of thousands of ids helps no one), and the note saying so (None when nothing was
        left out). Evaluation and live slices both cut this way."""
        groups = self.groups(frame)
        if not self.column or self.bins or len(groups) <= MAX_LEVELS:
            return groups, None
        note = (f"{self.column} has {len(groups)} values; the {MAX_LEVELS} largest are "
                "reported")
        return sorted(groups, key=lambda g: -int(g[1].sum()))[:MAX_LEVELS], note


def parse_slices(items: Sequence[Mapping[str, Any]]) -> list[SliceSpec]:
    """Specs from the recipe's ``slices`` entries (already shape-checked by the recipe model):
    filters are parsed here. ConfigError names the entry."""
    specs = []
    for item in items:
        where = item.get("where")
        if where is not None:
            expr = parse_filter(where)
            specs.append(SliceSpec(name=str(item.get("name") or where), where=expr))
        else:
            bins = item.get("bins")
            specs.append(SliceSpec(column=str(item["column"]),
                                   bins=tuple(float(b) for b in bins) if bins else None))
    return specs


def check_slice_gates(gates: Sequence[Gate], specs: Sequence[SliceSpec]) -> None:
    """Each slice gate must name a slice the recipe defines (a filter's name, or
    ``column=...`` of a sliced column); checked before any data is read."""
    names = {slice_key(s.name) for s in specs if s.name}
    columns = {slice_key(s.column) for s in specs if s.column}
    for gate in gates:
        if gate.slice is None:
            continue
        key = slice_key(gate.slice)
        column, sep, _ = key.partition("=")
        if key in names or (sep and column in columns):
            continue
        defined = [s.name or f"{s.column}=..." for s in specs] or ["none"]
        raise ConfigError(
            f"The gate {gate.text!r} names the slice {gate.slice!r}, which the recipe's "
            f"`slices` do not define (defined: {', '.join(map(str, defined))}).",
            hint="Add the column or a named filter to `slices`, or fix the gate's slice.",
            field="gates")


@dataclasses.dataclass(frozen=True)
class SliceResult:
    spec: str
    key: str
    rows: int
    metrics: dict[str, float]
    ci: dict[str, list[float]]
    flagged: bool
    judged: bool

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "key": self.key, "rows": self.rows, "metrics": self.metrics,
                "ci95": self.ci, "flagged": self.flagged, "judged": self.judged}


@dataclasses.dataclass(frozen=True)
class SliceReport:
    primary: str
    overall: float
    results: tuple[SliceResult, ...]
    notes: tuple[str, ...] = ()

    @property
    def flagged(self) -> list[SliceResult]:
        return [r for r in self.results if r.flagged]

    def evidence(self) -> dict[str, SliceEvidence]:
        return {r.key: SliceEvidence(r.key, r.rows, r.metrics) for r in self.results}

    def to_dict(self) -> dict[str, Any]:
        return {"primary_metric": self.primary, "overall": self.overall, "rule": FLAG_RULE,
                "min_rows": MIN_ROWS, "margin": MARGIN,
                "flagged": [r.key for r in self.flagged], "notes": list(self.notes),
                "slices": [r.to_dict() for r in self.results]}


def evaluate_slices(
    specs: Sequence[SliceSpec], frame: Any, y: Any, y_pred: Any, proba: Any | None,
    target: Target, primary: str, overall: Mapping[str, float], *, resamples: int = 500,
    seed: int = 0,
) -> SliceReport:
    """Score the predictions ``y_pred``/``proba`` of the rows of ``frame`` (same order as
    ``y``) on every slice of ``specs``; see the module docstring for the flag rule."""
    import numpy as np

    from mlharbor.evaluation.bootstrap import resample_indices
    from mlharbor.evaluation.report import clean_json, score_predictions

    y, y_pred = np.asarray(y), np.asarray(y_pred)
    reference = float(overall.get(primary, math.nan))
    results, notes = [], []
    for spec in specs:
        groups, note = spec.capped_groups(frame)
        notes += [note] if note else []
        for key, mask in groups:
            rows = int(mask.sum())
            if rows == 0:
                results.append(SliceResult(spec.label, key, 0, {}, {}, False, False))
                continue
            indices = resample_indices(rows, resamples, seed) if resamples else []
            # A slice may hold one class only: sklearn warns that some metrics are undefined
            # there (and answers 0.0), and they are left out of the slice's metrics instead.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scored = score_predictions(y[mask], y_pred[mask],
                                           proba[mask] if proba is not None else None,
                                           target, indices, with_curves=False)
            undefined = undefined_metrics(y[mask], y_pred[mask], target)
            metrics = {k: float(v) for k, v in scored.metrics.items()
                       if not math.isnan(v) and k not in undefined}
            ci = {k: v for k, v in scored.ci.items() if k in metrics}
            value = metrics.get(primary, math.nan)
            judged = rows >= MIN_ROWS and not math.isnan(value) and not math.isnan(reference)
            flagged = judged and _much_worse(primary, value, scored.ci.get(primary), reference)
            results.append(SliceResult(spec.label, key, rows, clean_json(metrics),
                                       clean_json(ci), flagged, judged))
    return SliceReport(primary, reference, tuple(results), tuple(notes))


def undefined_metrics(y: Any, y_pred: Any, target: Target) -> set[str]:
    """Classification metrics that have no value on these rows, although scikit-learn
    answers 0.0 for them (with a warning): recall without a positive row, precision without a
    positive prediction, F1 without either, and the per-class averages and ranking metrics
    when a class is absent. Reported as 0.0, they would flag a slice the model gets right
    (every row of a low-risk segment correctly predicted negative) and fail its gates."""
    import numpy as np

    if target.task != "classification":
        return set()
    out: set[str] = set()
    present = set(np.unique(y).tolist())
    if any(c not in present for c in target.classes):
        out |= {"balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc",
                "pr_auc"}
    if target.binary:
        true_positive_rows = int(np.sum(y == target.pos_label))
        predicted_positive = int(np.sum(y_pred == target.pos_label))
        if true_positive_rows == 0:
            out.add("recall")
        if predicted_positive == 0:
            out.add("precision")
        if true_positive_rows == 0 and predicted_positive == 0:
            out.add("f1")
    return out


def _much_worse(metric: str, value: float, ci: list[float] | None, overall: float) -> bool:
    if metric in LOWER_IS_BETTER:
        beyond = ci is None or ci[0] > overall
        return beyond and value > overall * (1 + MARGIN) + 1e-12
    beyond = ci is None or ci[1] < overall
    return beyond and value < overall - MARGIN - 1e-12


def value_text(value: Any) -> str:
    """A column value as slice keys show it (``2`` for 2.0, ``missing`` for NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item"):
        return value_text(value.item())
    return str(value)


def _levels(column: str, series: Any) -> list[tuple[str, Any]]:
    import numpy as np

    present = series.notna().to_numpy()
    texts = np.array([value_text(v) if p else "missing"
                      for v, p in zip(series.tolist(), present, strict=True)], dtype=object)
    groups = [(f"{column}={text}", texts == text)
              for text in sorted(set(texts.tolist()) - {"missing"})]
    if not present.all():
        groups.append((f"{column}=missing", ~present))
    return groups


def _binned(column: str, series: Any, edges: tuple[float, ...]) -> list[tuple[str, Any]]:
    import numpy as np
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(series):
        raise ConfigError(f"The slice column {column!r} holds text, so it cannot be cut into "
                          "bins; slice it by its values (drop `bins`) or with a filter.",
                          field="slices")
    values = series.to_numpy(dtype=float, na_value=np.nan)
    bounds = [-math.inf, *edges, math.inf]
    groups = []
    for lo, hi in itertools.pairwise(bounds):
        mask = (values >= lo) & (values < hi)
        left = "(" if math.isinf(lo) else "["
        groups.append((f"{column}={left}{_edge(lo)}, {_edge(hi)})", mask))
    missing = np.isnan(values)
    if missing.any():
        groups.append((f"{column}=missing", missing))
    return groups


def _edge(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:g}"
