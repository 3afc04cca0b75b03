"""Per-window bin counts: a window of rows is summarised once, and windows merge by addition.

Counting is the only pass over raw rows; everything after (statistics, long ranges, reports)
works on counts. A :class:`WindowCounts` is JSON-friendly so finished windows can be kept and a
month of drift is the sum of its days, without rescanning the log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

from mlharbor.monitoring.reference import PREDICTION, FeatureReference, Reference

UNSEEN_KEPT = 10  # most frequent unseen categories named in a report


@dataclasses.dataclass
class FeatureCounts:
    """One feature in one window: counts on the reference bins, missing and unseen rows."""

    counts: np.ndarray
    missing: int = 0
    unseen: int = 0
    unseen_values: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def present(self) -> int:
        return int(self.counts.sum())

    @property
    def rows(self) -> int:
        return self.present + self.missing + self.unseen

    def merge(self, other: FeatureCounts) -> FeatureCounts:
        values = dict(self.unseen_values)
        for key, count in other.unseen_values.items():
            values[key] = values.get(key, 0) + count
        top = dict(sorted(values.items(), key=lambda kv: -kv[1])[:UNSEEN_KEPT])
        return FeatureCounts(self.counts + other.counts, self.missing + other.missing,
                             self.unseen + other.unseen, top)


@dataclasses.dataclass
class WindowCounts:
    """Every feature (and the predictions, under ``__prediction__``) of one window."""

    features: dict[str, FeatureCounts]
    rows: int
    start: datetime | None = None
    end: datetime | None = None

    def merge(self, other: WindowCounts) -> WindowCounts:
        names = self.features.keys() | other.features.keys()
        merged: dict[str, FeatureCounts] = {}
        for name in names:
            a, b = self.features.get(name), other.features.get(name)
            if a is not None and b is not None:
                merged[name] = a.merge(b)
            else:
                merged[name] = a if a is not None else b  # type: ignore[assignment]
        starts = [t for t in (self.start, other.start) if t is not None]
        ends = [t for t in (self.end, other.end) if t is not None]
        return WindowCounts(merged, self.rows + other.rows, min(starts, default=None),
                            max(ends, default=None))

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "features": {n: {"counts": [int(c) for c in f.counts], "missing": f.missing,
                             "unseen": f.unseen, "unseen_values": f.unseen_values}
                         for n, f in self.features.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowCounts:
        features = {
            n: FeatureCounts(np.asarray(f["counts"], dtype=np.int64), int(f["missing"]),
                             int(f["unseen"]), dict(f.get("unseen_values") or {}))
            for n, f in data["features"].items()
        }
        start, end = data.get("start"), data.get("end")
        return cls(features, int(data["rows"]),
                   datetime.fromisoformat(start) if start else None,
                   datetime.fromisoformat(end) if end else None)


def merge_all(windows: list[WindowCounts]) -> WindowCounts | None:
    total: WindowCounts | None = None
    for window in windows:
        total = window if total is None else total.merge(window)
    return total


def count_window(reference: Reference, data: Any, *, predictions: Any = None,
                 start: datetime | None = None, end: datetime | None = None) -> WindowCounts:
    """Count the rows of ``data`` (a DataFrame, a pyarrow Table or a mapping of columns)."""
    columns = _columns(data)
    rows = _length(data)
    features = {name: count_feature(ref, columns.get(name), rows)
                for name, ref in reference.features.items()}
    if reference.prediction is not None and predictions is not None:
        features[PREDICTION] = count_feature(reference.prediction, predictions, rows)
    return WindowCounts(features, rows, start, end)


def count_feature(ref: FeatureReference, values: Any, rows: int) -> FeatureCounts:
    """Count one column into the reference bins; an absent column counts as all missing."""
    bins = len(ref.counts)
    if values is None:
        return FeatureCounts(np.zeros(bins, dtype=np.int64), missing=rows)
    if ref.numeric:
        x = _numeric(values, ref.kind == "datetime")
        nan = np.isnan(x)
        present = x[~nan] if nan.any() else x
        assert ref.edges is not None
        index = np.searchsorted(ref.edges, present, side="right") - 1
        np.clip(index, 0, bins - 1, out=index)
        return FeatureCounts(np.bincount(index, minlength=bins).astype(np.int64),
                             missing=int(nan.sum()))
    return _count_categorical(ref, values)


def _count_categorical(ref: FeatureReference, values: Any) -> FeatureCounts:
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(_as_list(values))
    missing = int(series.isna().sum())
    tally = series.value_counts(dropna=True)
    counts = np.zeros(len(ref.counts), dtype=np.int64)
    index = ref.index
    unseen: dict[str, int] = {}
    for key, count in zip(tally.index, tally.to_numpy(), strict=True):
        label = str(key)
        position = index.get(label)
        if position is None and isinstance(key, float) and key.is_integer():
            # A numeric model's inputs are logged as the float64 the model saw: 2.0 is the
            # category "2" of the training data.
            label = str(int(key))
            position = index.get(label)
        if position is None and ref.has_other:
            position = len(counts) - 1
        if position is None:
            unseen[label] = unseen.get(label, 0) + int(count)
        else:
            counts[position] += int(count)
    top = dict(sorted(unseen.items(), key=lambda kv: -kv[1])[:UNSEEN_KEPT])
    return FeatureCounts(counts, missing, sum(unseen.values()), top)


def _numeric(values: Any, datetime_like: bool) -> np.ndarray:
    import pandas as pd

    if hasattr(values, "to_pandas") and not isinstance(values, pd.Series):
        values = values.to_pandas()
    if datetime_like:
        stamps = pd.to_datetime(pd.Series(values), errors="coerce", utc=True)
        seconds = (stamps.astype("int64") / 1e9).where(stamps.notna())
        return np.asarray(seconds, dtype=float)
    if isinstance(values, pd.Series):
        return np.asarray(pd.to_numeric(values, errors="coerce"), dtype=float)
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return np.asarray(pd.to_numeric(pd.Series(_as_list(values)), errors="coerce"),
                          dtype=float)


def _as_list(values: Any) -> Any:
    if hasattr(values, "to_pylist"):
        return values.to_pylist()
    return values


def _columns(data: Any) -> Mapping[str, Any]:
    if data is None:
        return {}
    if hasattr(data, "column_names") and hasattr(data, "column"):  # pyarrow Table
        return {name: data.column(name) for name in data.column_names}
    if hasattr(data, "columns") and hasattr(data, "__getitem__"):  # pandas DataFrame
        return {str(c): data[c] for c in data.columns}
    if isinstance(data, Mapping):
        return data
    raise TypeError(f"cannot read columns from {type(data).__name__}")


def _length(data: Any) -> int:
    if data is None:
        return 0
    if hasattr(data, "num_rows"):
        return int(data.num_rows)
    if isinstance(data, Mapping):
        return max((len(v) for v in data.values()), default=0)
    return len(data)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> Any:
    """``90s``, ``15m``, ``24h``, ``7d``, ``2w`` as a timedelta (ConfigError-free: InvalidInput)."""
    from datetime import timedelta

    from mlharbor.core.errors import InvalidInputError

    value = text.strip().lower()
    try:
        amount = float(value[:-1])
        unit = _UNITS[value[-1]]
    except (KeyError, ValueError, IndexError) as exc:
        raise InvalidInputError(
            f"The duration {text!r} is not understood.",
            hint="Write a number and a unit: 90s, 15m, 24h, 7d or 2w.") from exc
    if not amount > 0:  # also NaN
        raise InvalidInputError(f"The duration {text!r} must be positive.")
    if amount * unit > MAX_DURATION_S:  # also infinity
        raise InvalidInputError(f"The duration {text!r} is longer than ten years.",
                                hint="Ask for a shorter window.")
    return timedelta(seconds=amount * unit)


MAX_DURATION_S = 10 * 366 * 86400
