"""Infer what each column is (numeric, categorical, datetime) and what the task is."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import InvalidInputError

if TYPE_CHECKING:
    import pandas as pd

# A numeric target with at most this many distinct integer values is treated as classes.
MAX_CLASSES_FOR_INFERENCE = 20


@dataclasses.dataclass(frozen=True)
class Schema:
    """Feature columns by kind, the target and the task."""

    target: str
    task: str
    features: dict[str, str]  # column -> numeric | categorical | datetime
    excluded: tuple[str, ...]
    classes: tuple[Any, ...] = ()  # sorted labels for classification

    def columns(self, kind: str) -> list[str]:
        return [c for c, k in self.features.items() if k == kind]

    @property
    def feature_names(self) -> list[str]:
        return list(self.features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "task": self.task,
            "features": dict(self.features),
            "excluded": list(self.excluded),
            "classes": [_plain(c) for c in self.classes],
        }


def infer_schema(
    frame: pd.DataFrame,
    target: str,
    *,
    task: str | None = None,
    overrides: Mapping[str, str] | None = None,
    exclude: Sequence[str] = (),
) -> Schema:
    """Kinds for every column except target and ``exclude``; ``overrides`` win over inference."""
    overrides = dict(overrides or {})
    if target not in frame.columns:
        raise InvalidInputError(
            f"The target column {target!r} is not in the data; columns are "
            f"{[str(c) for c in frame.columns]}.",
            field="target",
        )
    features: dict[str, str] = {}
    for column in frame.columns:
        name = str(column)
        if name == target or name in exclude:
            continue
        features[name] = overrides.get(name) or infer_kind(frame[column])
    labels = frame[target].dropna()
    resolved = task or infer_task(labels)
    classes: tuple[Any, ...] = ()
    if resolved == "classification":
        classes = tuple(sorted(labels.unique().tolist(), key=_sort_key))
    return Schema(target, resolved, features, tuple(exclude), classes)


def infer_kind(series: pd.Series) -> str:
    """numeric, categorical or datetime; text cells that are mostly numbers make a numeric
    column (:mod:`mlharbor.data.numbers`: its bad cells are a data-check finding, so one typo
    never turns a numeric column categorical)."""
    import pandas as pd

    from mlharbor.data.numbers import parse_numbers

    if pd.api.types.is_bool_dtype(series):
        return "categorical"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    if parse_numbers(series).mostly_numeric:
        return "numeric"
    sample = series.dropna().astype(str).head(200)
    if len(sample) and sample.str.match(r"^\d{4}-\d{2}-\d{2}").mean() > 0.95:
        parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
        if parsed.notna().mean() > 0.95:
            return "datetime"
    return "categorical"


def infer_task(labels: pd.Series) -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(labels) or not pd.api.types.is_numeric_dtype(labels):
        return "classification"
    values = labels.to_numpy()
    integral = bool((values == values.round()).all()) if len(values) else True
    if integral and labels.nunique() <= MAX_CLASSES_FOR_INFERENCE:
        return "classification"
    return "regression"


def _sort_key(value: Any) -> tuple[str, Any]:
    return (type(value).__name__, value)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
