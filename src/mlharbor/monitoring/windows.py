"""Per-window bin counts: a window of rows is summarised once, and windows merge by addition.

Counting is the only pass over raw rows; everything after (statistics, long ranges, reports)
works on counts. A :class:`WindowCounts` is JSON-friendly so finished windows can be kept and a
month of drift is the sum of its days, without rescanning the log.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from mlharbor.core.durations import DURATION_UNITS as _UNITS

# Re-exported: windows are where most callers meet durations.
from mlharbor.core.durations import MAX_DURATION_S as MAX_DURATION_S
from mlharbor.core.durations import parse_duration as parse_duration
from mlharbor.core.errors import InvalidInputError
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
        from mlharbor.data.profile import unix_seconds

        stamps = pd.to_datetime(pd.Series(values), errors="coerce", utc=True)
        seconds = unix_seconds(stamps)
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


MICROSECOND = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- windows on the step's grid ------------------------------------------------------------


class WindowLimitError(InvalidInputError):
    """More windows were asked for than ``monitoring.max_windows`` allows (HTTP routes answer
    it 422 naming the parameter, like any malformed query)."""


def moment_of(micros: int) -> datetime:
    """The UTC moment ``micros`` microseconds after the Unix epoch: the inverse of
    :func:`mlharbor.core.clock.epoch_micros`, exact (no float on the way)."""
    return _EPOCH + timedelta(microseconds=micros)


def window_count(start_us: int, end_us: int, step_us: int) -> int:
    """How many windows :func:`window_bounds` cuts ``[start_us, end_us)`` into (O(1))."""
    if end_us <= start_us:
        return 0
    # Grid points g * step strictly inside (start, end): g from start // step + 1 to
    # (end - 1) // step; each one splits a window in two.
    return (end_us - 1) // step_us - start_us // step_us + 1


def check_window_count(count: int, limit: int, *, asked: str, fix: str,
                       field: str = "step") -> None:
    """The one cap on windows per request (``monitoring.max_windows``): every windowed
    computation calls it before building a window. ``asked`` says what was asked for
    ("A 7d window in 1s steps"), ``fix`` how to ask for fewer windows."""
    if count <= limit:
        return
    raise WindowLimitError(
        f"{asked} makes {count:,} windows; at most {limit:,} are allowed "
        "(setting monitoring.max_windows).", hint=fix, field=field, limit=limit,
        received=count)


def check_time_windows(span: timedelta, step: timedelta, limit: int) -> int:
    """How many ``step`` windows laid from the start of ``span`` cover it (the last one may
    be cut short), refused past ``limit``."""
    span_us, step_us = max(span // MICROSECOND, 0), max(step // MICROSECOND, 1)
    count = window_count(0, span_us, step_us)
    _check_steps(count, limit, span_us, step_us)
    return count


def _check_steps(count: int, limit: int, span_us: int, step_us: int) -> None:
    fewest = -(-span_us // max(limit - 1, 1))  # ceil: a step this long always fits
    # Rounded up to a readable grain: ms below a second, s below an hour, min below a day.
    grain = next(g for bound, g in ((10**6, 10**3), (3600 * 10**6, 10**6),
                                    (86400 * 10**6, 60 * 10**6), (None, 3600 * 10**6))
                 if bound is None or fewest < bound)
    fewest = -(-fewest // grain) * grain
    check_window_count(
        count, limit, field="step",
        asked=f"A {_human(timedelta(microseconds=span_us))} window in "
              f"{_human(timedelta(microseconds=step_us))} steps",
        fix=f"Use a longer step (at least {_human(timedelta(microseconds=fewest))}) or a "
            "shorter window.")


def window_bounds(start_us: int, end_us: int, step_us: int, *, limit: int
                  ) -> list[tuple[int, int]]:
    """``[start_us, end_us)`` cut at the multiples of ``step_us`` since the epoch (whole hours
    for 1h, so the finished windows of one report are the cached windows of the next).

    Integer microseconds throughout: the windows cover the span exactly, without gap or
    overlap, each is non-empty, and the boundaries strictly increase (a ``range``, so the
    loop always ends). An empty span has no windows. More than ``limit`` windows is refused
    before any is built.
    """
    if step_us < 1:
        raise InvalidInputError(f"The step must be at least a microsecond; received "
                                f"{step_us} us.", field="step")
    count = window_count(start_us, end_us, step_us)
    _check_steps(count, limit, max(end_us - start_us, 0), step_us)
    if count == 0:
        return []
    inner = range((start_us // step_us + 1) * step_us, end_us, step_us)
    edges = [start_us, *inner, end_us]
    return list(itertools.pairwise(edges))


def time_windows(start: datetime, end: datetime, step: timedelta, *, limit: int
                 ) -> list[tuple[datetime, datetime]]:
    """:func:`window_bounds` on datetimes (UTC)."""
    from mlharbor.core.clock import epoch_micros

    bounds = window_bounds(epoch_micros(start), epoch_micros(end), step // MICROSECOND,
                           limit=limit)
    return [(moment_of(lo), moment_of(hi)) for lo, hi in bounds]


def _human(span: timedelta) -> str:
    """A duration as exact ``parse_duration`` text in the largest unit that keeps at most three
    decimals (``3650d``, ``1.5h``, ``40.7s``, ``0.000001s``)."""
    from decimal import Decimal

    micros = span // MICROSECOND
    for suffix, seconds in sorted(_UNITS.items(), key=lambda kv: -kv[1]):
        size = seconds * 1_000_000
        if micros >= size and (micros * 1000) % size == 0:
            return _decimal_text(Decimal(micros) / Decimal(size)) + suffix
    return _decimal_text(Decimal(micros) / Decimal(1_000_000)) + "s"


def _decimal_text(value: Any) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
