"""Reference and current distributions of every feature, on the reference's fixed bins.

A drift score says *that* a feature moved; the two histograms say *how* (a shifted mean, a new
category, a fatter tail). Both are shares of the non-missing rows on the bins frozen with the
version's reference profile, so they are comparable bin by bin: exactly what the drift tests
compared.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from mlharbor.monitoring.reference import FeatureReference
    from mlharbor.monitoring.service import Monitor
    from mlharbor.monitoring.windows import FeatureCounts

OTHER_LABEL = "(other)"


def feature_distributions(monitor: Monitor, endpoint: str, *, model: str, version: int,
                          start: datetime, end: datetime) -> dict[str, dict[str, Any]]:
    """Feature name (and ``__prediction__`` when profiled) -> its two distributions over the
    rows ``version`` answered on ``endpoint`` in ``[start, end)``."""
    engine = monitor.drift_engine(model, version)
    # The monitor's own window counting (the drift report counted the same rows the same way).
    window = monitor.window_counts(engine, endpoint, version, start, end)
    reference = engine.reference
    refs = dict(reference.features)
    if reference.prediction is not None:
        refs[reference.prediction.name] = reference.prediction
    return {name: distribution(ref, window.features.get(name)) for name, ref in refs.items()}


def distribution(ref: FeatureReference, counts: FeatureCounts | None) -> dict[str, Any]:
    """One feature: bin labels, reference and current shares, rows and missing shares."""
    import numpy as np

    current = counts.counts if counts is not None else np.zeros_like(ref.counts)
    body: dict[str, Any] = {
        "kind": ref.kind,
        "bins": _labels(ref),
        "reference": _shares(ref.counts),
        "current": _shares(current),
        "reference_rows": ref.rows,
        "current_rows": counts.rows if counts is not None else 0,
        "reference_missing_share": ref.missing / ref.rows if ref.rows else 0.0,
        "current_missing_share": (counts.missing / counts.rows
                                  if counts is not None and counts.rows else 0.0),
    }
    if ref.numeric and ref.edges is not None:
        body["edges"] = [float(e) for e in ref.edges]
    return body


def _shares(counts: np.ndarray) -> list[float]:
    total = float(counts.sum())
    return [float(c) / total if total else 0.0 for c in counts]


def _labels(ref: FeatureReference) -> list[str]:
    if not ref.numeric:
        return [*ref.categories, *([OTHER_LABEL] if ref.has_other else [])]
    if ref.values:
        return _value_labels(ref.values)
    edges: list[float] = [] if ref.edges is None else [float(e) for e in ref.edges]
    show = _date if ref.kind == "datetime" else _number
    return [f"{show(lo)} to {show(hi)}" for lo, hi in itertools.pairwise(edges)]


def _value_labels(values: tuple[float, ...]) -> list[str]:
    """Labels of the per-value layout: below, each value and the gap after it, above."""
    shown = [f"{int(v)}" for v in values]
    labels = [f"below {shown[0]}"]
    for low, high in itertools.pairwise(shown):
        labels += [low, f"between {low} and {high}"]
    return [*labels, shown[-1], f"above {shown[-1]}"]


def _number(value: float) -> str:
    return f"{value:.4g}"


def _date(value: float) -> str:
    return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d")
