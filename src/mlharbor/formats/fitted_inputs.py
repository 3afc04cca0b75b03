"""The inputs of a scikit-learn model fitted on a DataFrame, read from the model itself.

Registering a fitted pipeline without a sample needs its input columns: names and order come
from ``feature_names_in_``; each column's type from the first step that reads it (an encoder's
``categories_``, an imputer's ``statistics_``, a text vectoriser, a scaler, passthrough, the
estimator). What the steps learned (categories, means and scales, ranges) also makes rows that
look like the training data, for the input example and the ONNX parity check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlharbor.core.signature import ColumnSpec

SAMPLE_HINT = ("Pass --sample FILE (a CSV with a few real input rows), or sample_input= in "
                "Python.")


@dataclass
class FittedColumn:
    """One input column as the fitted pipeline sees it, with what it learned about the values.

    ``center`` and ``spread`` come from a scaler or imputer (mean and standard deviation,
    median and IQR, the mid-range ...); ``categories`` from an encoder's ``categories_``;
    ``words`` from a text vectoriser's vocabulary. They let rows be generated that look like
    the training data, for the input example and the ONNX parity check.
    """

    name: str
    dtype: str = "float64"
    nullable: bool = False
    categories: tuple[Any, ...] | None = None
    center: float | None = None
    spread: float | None = None
    words: tuple[str, ...] = ()

    def spec(self) -> ColumnSpec:
        cats = self.categories if self.dtype == "string" else None
        return ColumnSpec(self.name, self.dtype, self.nullable, cats)


def fitted_columns(model: Any) -> list[FittedColumn] | None:
    """The input columns of a model fitted on a DataFrame, read from the model itself.

    ``feature_names_in_`` gives the names and order; each column's type comes from the first
    step that reads it: an encoder (``categories_``: strings or numbers), an imputer (its
    ``statistics_``; missing values become allowed), a text vectoriser (strings), a numeric
    scaler, passthrough or the estimator itself (numbers). Columns a ``ColumnTransformer``
    drops are not inputs. A column only a custom or function transformer reads is taken as
    numbers (what scikit-learn assumes); the builder then predicts on generated rows, and a
    wrong guess ends in one error saying to pass a sample. None for models fitted on arrays.
    """
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return None
    found: dict[str, FittedColumn] = {}
    unknown: dict[str, str] = {}
    _visit(model, [str(n) for n in names], found, unknown)
    for column in unknown:  # numbers, as scikit-learn assumes; predicting on rows checks it
        found.setdefault(column, FittedColumn(column))
    return [found[n] for n in (str(n) for n in names) if n in found]


def _visit(est: Any, columns: list[str], found: dict[str, FittedColumn],
           unknown: dict[str, str], nullable: bool = False) -> None:
    """Record what ``est`` (reading ``columns`` first) reveals about each column."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if isinstance(est, Pipeline):
        steps = [s for _, s in est.steps if s not in (None, "passthrough")]
        for position, step in enumerate(steps):
            if _is_imputer(step) and position + 1 < len(steps):
                _note_imputer(step, columns, found)
                nullable = True
                continue  # an imputer keeps its columns: the next step reveals more
            _visit(step, columns, found, unknown, nullable)
            return
        for column in columns:  # only imputers, or an empty pipeline
            found.setdefault(column, FittedColumn(column, nullable=nullable))
        return
    if isinstance(est, ColumnTransformer):
        names_in = [str(n) for n in getattr(est, "feature_names_in_", columns)]
        for _, trans, cols in est.transformers_:
            if isinstance(trans, str) and trans == "drop":
                continue
            selected = _column_names(cols, names_in)
            if isinstance(trans, str):  # passthrough: the values reach the next step as is
                for column in selected:
                    found.setdefault(column, FittedColumn(column, nullable=nullable))
                continue
            _visit(trans, selected, found, unknown, nullable)
        return
    _leaf(est, columns, found, unknown, nullable)


def _leaf(est: Any, columns: list[str], found: dict[str, FittedColumn],
          unknown: dict[str, str], nullable: bool) -> None:
    import numpy as np

    module = type(est).__module__
    categories = getattr(est, "categories_", None)
    if categories is not None and len(categories) == len(columns):
        for column, cats in zip(columns, categories, strict=True):
            found[column] = _categorical(column, list(np.asarray(cats, dtype=object)),
                                         nullable, found.get(column))
        return
    vocabulary = getattr(est, "vocabulary_", None)
    if module.startswith("sklearn.feature_extraction.text") and vocabulary is not None:
        for column in columns:
            found[column] = FittedColumn(column, "string", nullable,
                                         words=tuple(sorted(vocabulary))[:200])
        return
    if _is_imputer(est):
        _note_imputer(est, columns, found)
        nullable = True
    if module.startswith("sklearn.") and not module.startswith("sklearn.preprocessing._function"):
        center, spread = _statistics(est, len(columns))
        for i, column in enumerate(columns):
            previous = found.get(column)
            if previous is not None and previous.dtype == "string":
                continue  # a string imputer already said what the column holds
            found[column] = FittedColumn(
                column, "float64", nullable or bool(previous and previous.nullable),
                center=_pick(center, i, previous.center if previous else None),
                spread=_pick(spread, i, previous.spread if previous else None))
        return
    for column in columns:
        unknown[column] = type(est).__name__


def _categorical(column: str, cats: list[Any], nullable: bool,
                 previous: FittedColumn | None) -> FittedColumn:
    present = [c for c in cats if c is not None and c == c]
    has_missing = len(present) != len(cats) or nullable or bool(previous and previous.nullable)
    if present and all(isinstance(c, str) for c in present):
        return FittedColumn(column, "string", has_missing, tuple(present))
    numbers = [float(c) for c in present]
    integral = all(n == round(n) for n in numbers)
    return FittedColumn(column, "int64" if integral and not has_missing else "float64",
                        has_missing, tuple(int(n) if integral else n for n in numbers))


def _is_imputer(est: Any) -> bool:
    return type(est).__module__.startswith("sklearn.impute")


def _note_imputer(est: Any, columns: list[str], found: dict[str, FittedColumn]) -> None:
    """A string imputer makes its columns strings; a numeric one gives their centres."""
    import numpy as np

    stats = getattr(est, "statistics_", None)
    values = [] if stats is None else list(np.asarray(stats, dtype=object).ravel())
    for i, column in enumerate(columns):
        value = values[i] if i < len(values) else None
        if isinstance(value, str):
            found[column] = FittedColumn(column, "string", True, (value,))
        elif isinstance(value, int | float | np.number) and value == value:
            found[column] = FittedColumn(column, "float64", True, center=float(value))
        else:
            found[column] = FittedColumn(column, "float64", True)


def _statistics(est: Any, width: int) -> tuple[list[float] | None, list[float] | None]:
    """Per-column centre and spread learned by a scaler or imputer, when it learned them."""
    import numpy as np

    def read(name: str) -> list[float] | None:
        value = getattr(est, name, None)
        if value is None:
            return None
        try:
            arr = np.asarray(value, dtype=float).ravel()
        except (TypeError, ValueError):
            return None
        return [float(v) for v in arr] if len(arr) == width else None

    for centre_name, spread_name in (("mean_", "scale_"), ("center_", "scale_"),
                                     ("statistics_", None)):
        centre = read(centre_name)
        if centre is not None:
            return centre, read(spread_name) if spread_name else None
    low, high = read("data_min_"), read("data_max_")
    if low is not None and high is not None:
        return ([(a + b) / 2 for a, b in zip(low, high, strict=True)],
                [(b - a) / 4 for a, b in zip(low, high, strict=True)])
    return None, None


def _pick(values: list[float] | None, i: int, fallback: float | None) -> float | None:
    if values is None:
        return fallback
    value = values[i]
    return value if value == value else fallback


def _column_names(cols: Any, names_in: list[str]) -> list[str]:
    """A ColumnTransformer's column selection as names: names, indices, a mask or a slice."""
    import numpy as np

    if isinstance(cols, str):
        return [cols]
    if isinstance(cols, int | np.integer):
        return [names_in[int(cols)]]
    if isinstance(cols, slice):
        return names_in[cols]
    picked = list(np.asarray(cols).ravel().tolist()) if not isinstance(cols, list) else cols
    if picked and all(isinstance(c, bool) for c in picked):
        return [n for n, keep in zip(names_in, picked, strict=True) if keep]
    return [names_in[c] if isinstance(c, int) else str(c) for c in picked]


def generated_rows(columns: list[FittedColumn], count: int = 200, seed: int = 0) -> Any:
    """Rows that look like the training data, from what the pipeline learned (a DataFrame).

    The first row is the typical one (centres, first categories); the rest draw categories
    uniformly and numbers from a normal around each centre. No missing values are drawn: the
    parity check compares runtimes on values both must accept.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {}
    for col in columns:
        if col.categories:
            picks = rng.integers(len(col.categories), size=count)
            picks[0] = 0
            values: Any = [col.categories[int(i)] for i in picks]
        elif col.words:
            values = [" ".join(rng.choice(col.words, size=3)) for _ in range(count)]
        elif col.dtype == "string":
            values = [""] * count
        else:
            centre = col.center if col.center is not None else 0.0
            spread = col.spread if col.spread else max(1.0, abs(centre) * 0.2)
            values = centre + spread * rng.standard_normal(count)
            values[0] = centre
            if col.dtype in ("int64", "int32"):
                values = np.round(values).astype(np.int64)
        data[col.name] = pd.Series(values, dtype=object if col.dtype == "string" else None)
    return pd.DataFrame(data, columns=[c.name for c in columns])
