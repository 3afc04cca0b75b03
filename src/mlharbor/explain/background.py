"""Background rows for explainers, from what a version already stores.

The linear rule needs the mean of the inputs and the sampled fallback needs rows to replace
features with. A registered version keeps its training data's reference profile
(``mlharbor.profile/v1``, see :mod:`mlharbor.data.profile`), which holds, per feature, a
uniform sample of a numeric column's values and a categorical column's counts, but no joint
rows. :func:`background_from_profile` draws each column independently from those marginals:
the *interventional, independent-features* background KernelSHAP and the linear rule assume.
Without a profile, :func:`background_rows` falls back to the input example stored with the
bundle. Trees need no background (path-dependent TreeSHAP uses their node counts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mlharbor.core.signature import Signature

BACKGROUND_ROWS = 100


def background_from_profile(profile: Mapping[str, Any], signature: Signature, *,
                            rows: int = BACKGROUND_ROWS, seed: int = 0
                            ) -> dict[str, list[Any]] | None:
    """``rows`` rows (column -> values) drawn from the profile's marginals, or None when the
    profile lacks a signature column."""
    features = profile.get("features") if isinstance(profile, Mapping) else None
    if not isinstance(features, Mapping):
        return None
    rng = np.random.default_rng(seed)
    out: dict[str, list[Any]] = {}
    for column in signature.inputs:
        entry = features.get(column.name)
        if not isinstance(entry, Mapping):
            return None
        values = _draw(entry, rows, rng)
        if values is None:
            return None
        if column.dtype == "string":
            values = [str(v) for v in values]
        elif column.dtype == "bool":
            values = [str(v).lower() in ("true", "1") for v in values]
        out[column.name] = values
    return out


def _draw(entry: Mapping[str, Any], rows: int, rng: np.random.Generator) -> list[Any] | None:
    kind = entry.get("kind")
    if kind in ("numeric", "datetime"):
        sample = [float(v) for v in entry.get("sample") or [] if v is not None]
        if not sample:
            mean = entry.get("mean")
            return None if mean is None else [float(mean)] * rows
        return [float(v) for v in rng.choice(np.asarray(sample), size=rows)]
    if kind == "categorical":
        counts = {str(k): int(v) for k, v in (entry.get("counts") or {}).items()
                  if int(v) > 0}
        if not counts:
            return None
        names = list(counts)
        weights = np.asarray([counts[n] for n in names], dtype=float)
        picked = rng.choice(len(names), size=rows, p=weights / weights.sum())
        return [names[i] for i in picked]
    return None


def background_rows(signature: Signature, *, profile: Mapping[str, Any] | None = None,
                    example: Any = None, rows: int = BACKGROUND_ROWS) -> Any:
    """The best background available: the profile's marginals, else the input example,
    else None (only trees and boosters can then be explained)."""
    if profile:
        drawn = background_from_profile(profile, signature, rows=rows)
        if drawn is not None:
            return drawn
    return example
