"""Data contract checks run before training.

Each finding names the column and the figure. ``violation`` findings stop training; ``warning``
findings are shown and stored with the version.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from mlharbor.data.numbers import UnparseablePolicy
from mlharbor.data.schema import Schema

if TYPE_CHECKING:
    import pandas as pd


@dataclasses.dataclass(frozen=True)
class Thresholds:
    max_missing_share: float = 0.5
    max_duplicate_share: float = 0.5
    max_target_missing_share: float = 0.0
    max_categories: int = 50
    min_class_share: float = 0.05
    min_class_count: int = 2
    leakage_threshold: float = 0.98


@dataclasses.dataclass(frozen=True)
class Finding:
    check: str
    severity: str  # "violation" | "warning"
    column: str | None
    value: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CheckReport:
    findings: tuple[Finding, ...]

    @property
    def violations(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "violation"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "violations": [f.to_dict() for f in self.violations],
            "warnings": [f.to_dict() for f in self.warnings],
        }


def check_dataset(
    frame: pd.DataFrame, schema: Schema, thresholds: Thresholds, *, seed: int = 0,
    unparseable_numbers: UnparseablePolicy = "fail",
) -> CheckReport:
    """Run every check on ``frame`` (target included) and collect the findings.

    Cells of a numeric feature that are not numbers (:mod:`mlharbor.data.numbers`) are a
    violation, or with ``unparseable_numbers="coerce"`` a warning; the other checks of that
    column see them as missing, as training will once they are coerced.
    """
    from mlharbor.data.numbers import bad_cells_text, parse_numbers

    found = _target_findings(frame, schema, thresholds)
    if any(f.check == "single_class" for f in found):
        # Nothing else means anything with one class: every leakage score is perfect and
        # scikit-learn warns at each fold. One finding, before any fitting.
        return CheckReport(tuple(f for f in found if f.severity == "violation"))
    for column, kind in schema.features.items():
        series = frame[column]
        if kind == "numeric":
            cells = parse_numbers(series)
            if cells.bad:
                found.append(_not_numbers(column, cells.bad, bad_cells_text(cells),
                                          unparseable_numbers))
            series = cells.values
        share = float(series.isna().mean())
        if share > thresholds.max_missing_share:
            found.append(_f(
                "missing_values", "violation", column, share,
                f"Column {column!r} is missing in {percent(share, thresholds.max_missing_share)} "
                f"of rows; at most {percent(thresholds.max_missing_share)} allowed. Exclude it "
                "or raise checks.max_missing_share.",
            ))
        elif share > 0:
            found.append(_f(
                "missing_values", "warning", column, share,
                f"Column {column!r} is missing in {percent(share, 0.0)} of rows; they will be "
                "imputed.",
            ))
        distinct = int(series.nunique(dropna=True))
        if distinct <= 1:
            found.append(_f(
                "constant_column", "warning", column, float(distinct),
                f"Column {column!r} has {distinct} distinct value(s); it carries no signal.",
            ))
        if kind == "categorical" and distinct > thresholds.max_categories:
            found.append(_f(
                "high_cardinality", "warning", column, float(distinct),
                f"Categorical column {column!r} has {distinct} distinct values (more than "
                f"{thresholds.max_categories}); if it is an identifier, add it to "
                "data.id_columns.",
            ))
    duplicates = float(frame.duplicated().mean())
    if duplicates > thresholds.max_duplicate_share:
        found.append(_f(
            "duplicate_rows", "violation", None, duplicates,
            f"{percent(duplicates, thresholds.max_duplicate_share)} of rows are exact "
            f"duplicates; at most {percent(thresholds.max_duplicate_share)} allowed.",
        ))
    elif duplicates > 0:
        found.append(_f(
            "duplicate_rows", "warning", None, duplicates,
            f"{percent(duplicates, 0.0)} of rows are exact duplicates.",
        ))
    if schema.task == "classification":
        found.extend(_class_balance(frame[schema.target].dropna(), schema.target, thresholds))
    found.extend(_leakage(frame, schema, thresholds, seed))
    return CheckReport(tuple(found))


def _target_findings(frame: pd.DataFrame, schema: Schema, thresholds: Thresholds
                     ) -> list[Finding]:
    """The target's own checks, run first: missing labels (a violation over the allowed share,
    else a warning that counts the rows training drops) and, for classification, one class."""
    target = frame[schema.target]
    n, missing = len(frame), int(target.isna().sum())
    share = missing / n if n else 0.0
    allowed = thresholds.max_target_missing_share
    out: list[Finding] = []
    if share > allowed:
        out.append(_f(
            "target_missing", "violation", schema.target, share,
            f"The target {schema.target!r} is missing in {missing} of {n} rows "
            f"({percent(share, allowed)}); at most {percent(allowed)} allowed. Drop those rows "
            "or raise checks.max_target_missing_share.",
        ))
    elif missing:
        out.append(_f(
            "target_missing", "warning", schema.target, share,
            f"The target {schema.target!r} is missing in {missing} of {n} rows "
            f"({percent(share, 0.0)}); those {missing} rows are dropped, {n - missing} are used "
            f"(checks.max_target_missing_share allows {percent(allowed)}).",
        ))
    labels = target.dropna()
    if schema.task == "classification" and labels.nunique() < 2:
        import pandas as pd

        only = ""
        if len(labels):
            value = labels.iloc[0]
            value = value.item() if hasattr(value, "item") else value
            only = f" ({value!r} in all {len(labels)} labelled rows)"
        regression = (" or set data.task: regression" if pd.api.types.is_numeric_dtype(labels)
                      else "")
        out.append(_f(
            "single_class", "violation", schema.target, float(labels.nunique()),
            f"The target {schema.target!r} has one class{only}; classification needs at least "
            f"2. Check the data source and its filters{regression}.",
        ))
    return out


def percent(share: float, threshold: float | None = None) -> str:
    """``share`` (0.0497) as a percentage ("4.97%") that never reads as equal to ``threshold``.

    One decimal is enough unless rounding would make a value below (or above) the threshold
    print as the threshold itself: 4.97% against 5% prints "4.97%", never "5.0%". More
    decimals are added until the side is clear (at most six); without a threshold, trailing
    zeros are dropped ("5%", "0.5%").
    """
    if threshold is None:
        return f"{round(share * 100, 6):g}%"
    value, limit = share * 100, round(threshold * 100, 9)
    if share == threshold:
        return f"{value:.1f}%"
    for digits in range(1, 7):
        shown = round(value, digits)
        if (shown < limit) == (value < limit) and shown != limit:
            return f"{value:.{digits}f}%"
    return f"{'<' if value < limit else '>'}{limit:g}%"  # within a millionth of a percent


def _f(check: str, severity: str, column: str | None, value: float, message: str) -> Finding:
    return Finding(check, severity, column, round(value, 6), message)


def _not_numbers(column: str, bad: int, detail: str, policy: UnparseablePolicy) -> Finding:
    """The finding for cells of a numeric column that are not numbers (value: their count)."""
    if policy == "coerce":
        return _f("not_a_number", "warning", column, float(bad),
                  f"Numeric column {column!r}: {detail}; they are treated as missing "
                  "(data.unparseable_numbers: coerce).")
    return _f("not_a_number", "violation", column, float(bad),
              f"Numeric column {column!r}: {detail}. Fix those cells, set "
              "`data.unparseable_numbers: coerce` to treat them as missing, or declare the "
              "column categorical in data.features.")


def _class_balance(labels: pd.Series, target: str, thresholds: Thresholds) -> list[Finding]:
    counts = labels.value_counts()
    out: list[Finding] = []
    if len(counts) < 2:
        return out  # found by _target_findings, which stops the checks
    for label, count in counts.items():
        share = float(count / counts.sum())
        if count < thresholds.min_class_count:
            out.append(_f(
                "class_too_small", "violation", target, float(count),
                f"Class {label!r} of {target!r} has {count} row(s); at least "
                f"{thresholds.min_class_count} are needed (one per fold).",
            ))
        elif share < thresholds.min_class_share:
            out.append(_f(
                "class_imbalance", "warning", target, share,
                f"Class {label!r} of {target!r} is {percent(share, thresholds.min_class_share)} "
                f"of rows (below {percent(thresholds.min_class_share)}); prefer f1, "
                "balanced_accuracy or pr_auc.",
            ))
    return out


def _leakage(
    frame: pd.DataFrame, schema: Schema, thresholds: Thresholds, seed: int
) -> list[Finding]:
    """A depth-3 tree on one feature at a time; a near-perfect score hints at leakage."""
    import numpy as np
    from sklearn.model_selection import cross_val_score
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    known = frame[frame[schema.target].notna()]
    if len(known) > 20_000:
        known = known.sample(20_000, random_state=seed)
    if len(known) < 30:
        return []
    y = known[schema.target].to_numpy()
    if schema.task == "classification":
        if known[schema.target].value_counts().min() < 3:
            return []
        model: Any = DecisionTreeClassifier(max_depth=3, random_state=seed)
        scoring, label = "balanced_accuracy", "balanced accuracy"
    else:
        model = DecisionTreeRegressor(max_depth=3, random_state=seed)
        scoring, label = "r2", "R²"
    out: list[Finding] = []
    for column, kind in schema.features.items():
        x = _as_number(known[column], kind).reshape(-1, 1)
        if np.isnan(x).all():
            continue
        x = np.where(np.isnan(x), np.nanmin(x) - 1.0, x)
        score = float(cross_val_score(model, x, y, cv=3, scoring=scoring).mean())
        if score >= thresholds.leakage_threshold:
            out.append(_f(
                "leakage", "violation", column, score,
                f"Column {column!r} alone predicts {schema.target!r} with {label} {score:.3f} "
                f"(threshold {thresholds.leakage_threshold}); it probably leaks the target. "
                "Exclude it (data.exclude) or raise checks.leakage_threshold.",
            ))
    return out


def _as_number(series: pd.Series, kind: str) -> Any:
    import numpy as np
    import pandas as pd

    if kind == "numeric":
        return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    if kind == "datetime":
        stamps = pd.to_datetime(series, errors="coerce", format="mixed")
        return stamps.astype("int64").where(stamps.notna()).to_numpy(dtype=float)
    codes = pd.Series(pd.factorize(series, use_na_sentinel=True)[0], index=series.index)
    return np.where(codes.to_numpy() < 0, np.nan, codes.to_numpy()).astype(float)
