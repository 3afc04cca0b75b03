"""The reference a window is compared with: the profile frozen with a version at training time.

:func:`Reference.from_profile` reads the ``mlharbor.profile/v1`` document written by
:mod:`mlharbor.data.profile`, stored in a version's lineage by ``mlharbor train``, by
``mlharbor models register --training-data`` and by ``mlharbor monitor reference set``
(:func:`mlharbor.registry.bundles.set_reference`). It holds everything drift needs per feature:
numeric bin edges (quantiles, or per value for discrete columns: see
:mod:`mlharbor.data.profile`) with counts and a sample, categorical counts, the missing share,
and feature importances. :func:`Reference.from_frame` builds the same thing from a DataFrame
in memory (tests and notebooks, and the prediction reference, which the training profile does
not hold: see :func:`prediction_entry`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from mlharbor.core.errors import InvalidInputError

if TYPE_CHECKING:
    import pandas as pd

PREDICTION = "__prediction__"


@dataclasses.dataclass(frozen=True)
class FeatureReference:
    """One feature's reference distribution on its fixed bins."""

    name: str
    kind: str  # "numeric" (also datetime, as unix seconds) or "categorical"
    counts: np.ndarray  # reference counts per bin (non-missing rows)
    missing: int  # reference rows with a missing value
    edges: np.ndarray | None = None  # numeric: bin edges (outliers go to the end bins)
    points: np.ndarray | None = None  # numeric: representative value per bin
    scale: float = 1.0  # numeric: reference standard deviation
    categories: tuple[str, ...] = ()  # categorical: one bin per category ...
    has_other: bool = False  # ... plus a last "other" bin for the long tail
    values: tuple[float, ...] = ()  # numeric binned by value: bin 2i + 1 holds values[i]

    @property
    def rows(self) -> int:
        return int(self.counts.sum()) + self.missing

    @property
    def numeric(self) -> bool:
        return self.kind != "categorical"

    @property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.categories)}


@dataclasses.dataclass(frozen=True)
class Reference:
    """Every feature's reference, their importances, and optionally the predictions'."""

    features: dict[str, FeatureReference]
    importances: dict[str, float]
    prediction: FeatureReference | None = None
    digest: str = ""

    def weight(self, name: str) -> float:
        """Importance weight of a feature (uniform when no importances were stored)."""
        if not self.importances or all(v <= 0 for v in self.importances.values()):
            return 1.0
        return max(float(self.importances.get(name, 0.0)), 0.0)

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any]) -> Reference:
        if not isinstance(profile, Mapping) or "features" not in profile:
            raise InvalidInputError(
                "The reference profile is not a profile document: it has no 'features'.",
                hint="Pass the profile stored with the version (mlharbor.profile/v1).",
            )
        rows = int(profile.get("rows", 0))
        features = {name: _feature(name, entry, rows)
                    for name, entry in profile["features"].items()}
        prediction = None
        if isinstance(profile.get("predictions"), Mapping):
            entry = profile["predictions"]
            prediction = _feature(PREDICTION, entry, int(entry.get("rows", rows)))
        importances = {str(k): float(v) for k, v in (profile.get("importances") or {}).items()
                       if isinstance(v, int | float)}
        digest = hashlib.sha256(orjson.dumps(profile, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return cls(features, importances, prediction, digest)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, kinds: Mapping[str, str] | None = None,
                   importances: Mapping[str, float] | None = None,
                   predictions: Any = None, seed: int = 0) -> Reference:
        """Profile ``frame`` (kinds inferred when not given) and read it back."""
        from mlharbor.data.profile import build_profile

        kinds = dict(kinds or infer_kinds(frame))
        profile = build_profile(frame, kinds, seed=seed, importances=importances)
        if predictions is not None:
            profile["predictions"] = prediction_entry(predictions, seed=seed)
        return cls.from_profile(profile)


def infer_kinds(frame: pd.DataFrame) -> dict[str, str]:
    import pandas as pd

    kinds = {}
    for column in frame.columns:
        dtype = frame[column].dtype
        if pd.api.types.is_bool_dtype(dtype):
            kinds[str(column)] = "categorical"
        elif pd.api.types.is_numeric_dtype(dtype):
            kinds[str(column)] = "numeric"
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            kinds[str(column)] = "datetime"
        else:
            kinds[str(column)] = "categorical"
    return kinds


def prediction_entry(predictions: Any, *, seed: int = 0) -> dict[str, Any]:
    """A profile entry for model outputs (numeric scores or class labels), with its row count.

    Training can store it as ``profile["predictions"]`` so prediction drift has a reference.
    """
    import pandas as pd

    from mlharbor.data.profile import build_profile

    series = pd.Series(np.asarray(predictions).ravel())
    kind = "categorical" if series.dtype == object or series.dtype == bool else "numeric"
    if kind == "numeric" and series.nunique() <= 20 and (series % 1 == 0).all():
        kind = "categorical"  # integer class labels
    entry: dict[str, Any] = build_profile(series.to_frame("p"), {"p": kind}, seed=seed)[
        "features"]["p"]
    entry["rows"] = len(series)
    return entry


def _feature(name: str, entry: Mapping[str, Any], rows: int) -> FeatureReference:
    kind = str(entry.get("kind", ""))
    missing_share = float(entry.get("missing_share") or 0.0)
    if kind in ("numeric", "datetime"):
        edges = np.asarray(entry.get("bin_edges") or [], dtype=float)
        counts = np.asarray(entry.get("counts") or [], dtype=np.int64)
        if len(edges) < 2 or len(counts) != len(edges) - 1:
            counts = np.zeros(1, dtype=np.int64)
            edges = np.array([0.0, 0.0])
        present = int(counts.sum())
        missing = _missing(missing_share, present)
        sample = np.asarray(entry.get("sample") or [], dtype=float)
        scale = float(entry.get("std") or 0.0) or float(np.ptp(edges)) or 1.0
        values: tuple[float, ...] = ()
        if entry.get("binning") == "values":
            values = tuple(float(v) for v in entry.get("values") or [])
            if len(edges) != 2 * len(values) + 2:
                raise InvalidInputError(
                    f"Feature {name!r} of the reference profile is binned by value but has "
                    f"{len(values)} values for {len(edges)} edges (expected "
                    f"{2 * len(values) + 2}).",
                    hint="Rebuild the profile (mlharbor.data.profile.build_profile).",
                )
        return FeatureReference(name, kind, counts, missing, edges,
                                _points(edges, sample), scale, values=values)
    if kind == "categorical":
        raw = entry.get("counts") or {}
        categories = tuple(str(c) for c in raw)
        tallies = [int(raw[c]) for c in raw]
        other = int(entry.get("other") or 0)
        if other:
            tallies.append(other)
        arr = np.asarray(tallies or [0], dtype=np.int64)
        return FeatureReference(name, "categorical", arr, _missing(missing_share, int(arr.sum())),
                                categories=categories, has_other=bool(other))
    raise InvalidInputError(
        f"Feature {name!r} of the reference profile has kind {kind!r}.",
        hint="Expected numeric, datetime or categorical; rebuild the profile.",
    )


def _missing(share: float, present: int) -> int:
    """Missing rows implied by the missing share when ``present`` rows were not missing."""
    if share <= 0 or share >= 1:
        return 0
    return round(present * share / (1 - share))


def _points(edges: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Mean of the sample in each bin; bin midpoints where the sample has none."""
    bins = len(edges) - 1
    mids: np.ndarray = 0.5 * (edges[:-1] + edges[1:])
    if len(sample) == 0:
        return mids
    index = np.clip(np.searchsorted(edges, sample, side="right") - 1, 0, bins - 1)
    sums = np.bincount(index, weights=sample, minlength=bins)
    n = np.bincount(index, minlength=bins)
    points: np.ndarray = np.where(n > 0, sums / np.maximum(n, 1), mids)
    return points
