"""Attribution drift: how much each feature's share in the model's decisions moved between
the reference and a window, beside data drift (as Vertex AI Model Monitoring reports it).

Data drift says the inputs changed; attribution drift says whether the change matters to the
model: a feature whose distribution moved but which the model ignores does not move its mean
|attribution|, while a shift into a region where the model leans on a feature does.

For each feature ``j``, with attributions from the version's own explainer
(:mod:`mlharbor.explain`, the native model, summed over outputs):

* ``reference`` = mean |attribution| over rows drawn from the version's reference profile
  (each column drawn from its stored marginal, see
  :func:`mlharbor.explain.background.background_from_profile`);
* ``current`` = mean |attribution| over the window's logged inputs (at most ``rows``, evenly
  spaced in time order, so the cost is bounded whatever the traffic);
* ``change`` = ``current - reference``; ``score`` = ``|change|`` divided by the sum of every
  feature's ``reference``: the move as a share of the model's total attribution, comparable
  across features and models; ``drifted`` when ``score > threshold`` (default
  :data:`DEFAULT_THRESHOLD`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from mlharbor.core.errors import ConflictError, InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from mlharbor.explain import Attributions
    from mlharbor.monitoring.service import Monitor

DEFAULT_THRESHOLD = 0.1  # a feature moving by 10% of the model's total attribution
DEFAULT_ROWS = 200  # rows explained per side (reference, window)
MAX_ROWS = 2_000


@dataclasses.dataclass(frozen=True, slots=True)
class FeatureAttributionDrift:
    name: str
    reference: float
    current: float
    change: float
    score: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class AttributionDrift:
    """Per-feature attribution drift of one window against the reference."""

    features: tuple[FeatureAttributionDrift, ...]
    threshold: float
    reference_rows: int
    current_rows: int
    method: str
    output: str

    @property
    def drifted(self) -> bool:
        return any(f.drifted for f in self.features)

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {"drifted": self.drifted, "drifted_features": self.drifted_features,
                "threshold": self.threshold, "reference_rows": self.reference_rows,
                "current_rows": self.current_rows, "method": self.method,
                "output": self.output, "features": [f.to_dict() for f in self.features]}


def compare_attributions(reference: Attributions, current: Attributions, *,
                         threshold: float = DEFAULT_THRESHOLD) -> AttributionDrift:
    """The drift of ``current``'s mean |attribution| from ``reference``'s, feature by feature
    (most moved first)."""
    if reference.feature_names != current.feature_names:
        raise InvalidInputError("Reference and window attributions name different features.",
                                expected=list(reference.feature_names),
                                received=list(current.feature_names))
    if not 0 < threshold < 10:
        raise InvalidInputError(f"The threshold must be above 0 (and below 10); received "
                                f"{threshold}.", field="threshold")
    ref, cur = reference.mean_abs(), current.mean_abs()
    total = sum(ref.values()) or 1.0
    features = []
    for name in reference.feature_names:
        change = cur[name] - ref[name]
        score = abs(change) / total
        features.append(FeatureAttributionDrift(name, ref[name], cur[name], change, score,
                                                score > threshold))
    features.sort(key=lambda f: -f.score)
    return AttributionDrift(tuple(features), threshold, reference.rows, current.rows,
                            current.method, current.output_name)


def endpoint_attribution_drift(
    monitor: Monitor, endpoint: str, *, start: Any, end: Any, version: int | None = None,
    rows: int = DEFAULT_ROWS, threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Attribution drift of the predictions ``endpoint`` logged in ``[start, end)`` (the
    version that answered most of them, or ``version``) against that version's reference
    profile: the report of :func:`compare_attributions` with endpoint, model and version."""
    from mlharbor.core.errors import SchemaError
    from mlharbor.core.names import validate_name
    from mlharbor.explain import explainer_for
    from mlharbor.explain.background import background_from_profile
    from mlharbor.formats.base import TrustOptions
    from mlharbor.formats.predictor import load_bundle

    validate_name(endpoint, kind="endpoint name")  # it names a folder of the log
    if not 1 <= rows <= MAX_ROWS:
        raise InvalidInputError(f"rows must be 1 to {MAX_ROWS}; received {rows}.",
                                field="rows", expected=f"1..{MAX_ROWS}", received=rows)
    registry = monitor.registry
    if registry is None:
        raise NotFoundError("No registry is configured to read the version from.")
    model, version = monitor.served_version(endpoint, start, end, version)
    if model is None or version is None:
        raise NotFoundError(
            f"Endpoint {endpoint!r} logged no predictions between {start:%Y-%m-%d %H:%M} "
            f"and {end:%Y-%m-%d %H:%M} UTC.", hint="Widen the window.")
    mv = registry.get_version(f"{model}:{version}")
    profile = (mv.lineage or {}).get("reference_profile")
    if not profile:
        raise NotFoundError(
            f"Version {mv.ref} has no reference profile to draw reference rows from.",
            hint=f"Attach one: `mlharbor monitor reference set {mv.ref} --data FILE`.")
    trust = TrustOptions(skops_trusted_types=tuple(
        monitor.settings.formats.skops_trusted_types))
    predictor = load_bundle(registry.download(mv), expected_manifest=mv.manifest,
                            trust=trust, runtime="native")
    reference_rows = background_from_profile(profile, predictor.signature, rows=rows)
    if reference_rows is None:
        raise NotFoundError(f"The reference profile of {mv.ref} lacks some of its signature's "
                            "columns.", hint="Set the reference again from the training data.")
    window = _window_rows(monitor, endpoint, version, start, end, predictor.signature.names,
                          rows)
    explainer = explainer_for(predictor, reference_rows)
    reference = explainer.explain(reference_rows)
    try:
        current = explainer.explain(window)
    except SchemaError as exc:  # the log's rows, not the caller's request, do not fit
        raise ConflictError(
            f"The inputs {endpoint!r} logged for {mv.ref} do not fit its signature: "
            f"{exc.message}", hint="Was the log written under other redaction rules or by "
            "another version? Narrow the window, or name the version.") from exc
    report = compare_attributions(reference, current, threshold=threshold).to_dict()
    report.update(endpoint=endpoint, model=model, version=version)
    return report


def _window_rows(monitor: Monitor, endpoint: str, version: int, start: Any, end: Any,
                 names: tuple[str, ...], rows: int) -> dict[str, list[Any]]:
    """At most ``rows`` logged inputs, evenly spaced over the window in time order."""
    table = monitor.version_rows(endpoint, version, start, end)
    if table.num_rows == 0:
        raise NotFoundError(f"Endpoint {endpoint!r} logged no answered predictions of version "
                            f"{version} in the window.", hint="Widen the window.")
    redaction = getattr(monitor.log, "redaction", None)
    rules = (redaction.rules_for(endpoint) if redaction is not None else None) or {}
    redacted = [n for n in names if n in rules]
    if redacted:  # hashed or masked values are no longer the model's input
        raise ConflictError(
            f"The prediction log redacts {', '.join(map(repr, redacted[:5]))} of endpoint "
            f"{endpoint!r} (monitoring.redaction), so the window's inputs cannot be explained.",
            hint="Attribution drift needs those columns logged as received.")
    missing = [n for n in names if f"in.{n}" not in table.column_names]
    if missing:
        raise NotFoundError(
            f"The prediction log holds no inputs for {', '.join(missing[:5])}, so the "
            "window cannot be explained.",
            hint="Log inputs (monitoring.log_predictions) without redacting these columns.")
    if "at" in table.column_names:
        table = table.sort_by("at")
    pick = np.unique(np.linspace(0, table.num_rows - 1, min(rows, table.num_rows)).astype(int))
    taken = table.take(pick)
    return {n: taken[f"in.{n}"].to_pylist() for n in names}
