"""Reference profile of the training data, frozen at registration for drift monitoring.

Bins are fixed on the reference, so later windows are counted into the same bins and scores
stay comparable. The profile is plain JSON::

    {"format": "mlharbor.profile/v1", "rows": 4000,
     "features": {"tenure_months": {"kind": "numeric", "missing_share": 0.0,
                                     "bin_edges": [...], "counts": [...], "sample": [...],
                                     "mean": ..., "std": ..., "min": ..., "max": ...},
                  "contract": {"kind": "categorical", "missing_share": 0.0,
                               "counts": {"month-to-month": 2200, ...}, "other": 0}},
     "importances": {"tenure_months": 0.12, ...}}

Numeric ``counts`` has one entry per bin between consecutive ``bin_edges``; values below the
first or above the last edge fall in the first or last bin.

Bins are quantiles of the reference, except for a **discrete** column: integer values only,
at most :data:`MAX_DISTINCT_VALUES` of them. Quantile edges cannot split a value, so a 0/1
column would get a single bin "0 to 1" at 100% and its drift could never show. A discrete
column is profiled by value instead (``"binning": "values"``, ``"values": [...]``): one bin
``[v - 1/4, v + 1/4)`` per reference value ``v``, one bin for each gap between consecutive
values, one below the smallest and one above the largest. The gap and outer bins are empty in
the reference, so a window's values that the reference never had (a shift by 0.5, a new
code, a value off either end) land apart from every reference value and move the statistics.
The quarter-width keeps float noise (``0.9999999``) on its value. 20 is the quantile bin count:
a column with at most 20 values loses nothing a quantile binning could resolve, and it is the
bound under which a numeric target is read as classes (:mod:`mlharbor.data.schema`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

PROFILE_FORMAT = "mlharbor.profile/v1"
NUMERIC_BINS = 20
MAX_DISTINCT_VALUES = 20  # integer columns with at most this many values are binned by value
VALUE_HALF_WIDTH = 0.25  # a value's bin is [v - 1/4, v + 1/4): integers are 1 apart
_EXACT_FLOAT_INTEGERS = 2.0 ** 50  # beyond this, v +- 1/4 is not exact in float64
SAMPLE_SIZE = 10_000
MAX_CATEGORIES = 50
OTHER = "__other__"


def build_profile(
    frame: pd.DataFrame,
    features: Mapping[str, str],
    *,
    seed: int = 0,
    importances: Mapping[str, float] | None = None,
    sample_size: int = SAMPLE_SIZE,
) -> dict[str, Any]:
    """Profile every column in ``features`` (column -> numeric | categorical | datetime)."""
    profile: dict[str, Any] = {"format": PROFILE_FORMAT, "rows": len(frame), "features": {}}
    for position, (column, kind) in enumerate(features.items()):
        series = frame[column]
        if kind == "numeric":
            entry = _numeric(series, seed + position, sample_size)
        elif kind == "datetime":
            entry = _datetime(series, seed + position, sample_size)
        else:
            entry = _categorical(series)
        profile["features"][column] = entry
    if importances:
        profile["importances"] = {str(k): float(v) for k, v in importances.items()}
    return profile


def _numeric(series: pd.Series, seed: int, sample_size: int) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    present = values[~np.isnan(values)]
    entry: dict[str, Any] = {"kind": "numeric", "missing_share": _share_missing(series)}
    if len(present) == 0:
        entry.update(bin_edges=[], counts=[], sample=[], mean=None, std=None, min=None, max=None)
        return entry
    values = discrete_values(present)
    if values is not None:
        edges = value_edges(values)
        entry.update(binning="values", values=[float(v) for v in values])
    else:
        edges = np.unique(np.quantile(present, np.linspace(0.0, 1.0, NUMERIC_BINS + 1)))
        if len(edges) == 1:
            edges = np.array([edges[0], edges[0]])
        entry["binning"] = "quantiles"
    entry.update(
        bin_edges=[float(e) for e in edges],
        counts=[int(c) for c in bin_counts(present, edges)],
        sample=[float(v) for v in _sample(present, seed, sample_size)],
        mean=float(present.mean()),
        std=float(present.std()),
        min=float(present.min()),
        max=float(present.max()),
    )
    return entry


def discrete_values(present: Any) -> Any:
    """The sorted distinct values of ``present`` when the column is discrete, else None."""
    import numpy as np

    if not np.all(np.isfinite(present)) or np.abs(present).max() >= _EXACT_FLOAT_INTEGERS:
        return None
    if not np.all(present == np.round(present)):
        return None
    values = np.unique(present)
    return values if len(values) <= MAX_DISTINCT_VALUES else None


def value_edges(values: Any) -> Any:
    """Edges of the per-value layout: below, then per value its bin and the gap after it.

    ``[v1 - 3/4, v1 - 1/4, v1 + 1/4, v2 - 1/4, v2 + 1/4, ..., vk + 1/4, vk + 3/4]``: bin ``2i + 1``
    holds value ``i``; even bins are the empty outer and gap bins.
    """
    import numpy as np

    h = VALUE_HALF_WIDTH
    inner = np.column_stack([values - h, values + h]).ravel()
    return np.concatenate([[values[0] - 3 * h], inner, [values[-1] + 3 * h]])


def bin_counts(values: Any, edges: Any) -> Any:
    """Counts of ``values`` in the bins between ``edges``; outliers go to the end bins."""
    import numpy as np

    bins = max(len(edges) - 1, 1)
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    return np.bincount(index, minlength=bins)


# Ticks per second of each resolution pandas may parse timestamps into.
_TICKS_PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def unix_seconds(stamps: pd.Series) -> pd.Series:
    """Seconds since 1970-01-01 UTC of a datetime series (NaN where missing), whatever
    resolution pandas parsed it into: ISO dates parse to microseconds, nanosecond strings to
    nanoseconds, so the integer behind a timestamp is not always nanoseconds."""
    ticks = _TICKS_PER_SECOND[str(stamps.dt.unit)]
    return (stamps.astype("int64") / ticks).where(stamps.notna())


def _datetime(series: pd.Series, seed: int, sample_size: int) -> dict[str, Any]:
    import pandas as pd

    stamps = pd.to_datetime(series, errors="coerce", format="mixed")
    seconds = unix_seconds(stamps)
    entry = _numeric(seconds, seed, sample_size)
    entry["kind"] = "datetime"
    entry["unit"] = "unix_seconds"
    return entry


def _categorical(series: pd.Series) -> dict[str, Any]:
    counts = series.dropna().astype(str).value_counts()
    top = counts.head(MAX_CATEGORIES)
    return {
        "kind": "categorical",
        "missing_share": _share_missing(series),
        "counts": {str(k): int(v) for k, v in top.items()},
        "other": int(counts.iloc[MAX_CATEGORIES:].sum()),
        "other_key": OTHER,
    }


def _sample(values: Any, seed: int, size: int) -> Any:
    """A uniform sample without replacement (what a reservoir sample gives on a fixed table)."""
    import numpy as np

    if len(values) <= size:
        return values
    rng = np.random.default_rng(seed)
    return values[np.sort(rng.choice(len(values), size, replace=False))]


def _share_missing(series: pd.Series) -> float:
    return float(series.isna().mean()) if len(series) else 0.0
