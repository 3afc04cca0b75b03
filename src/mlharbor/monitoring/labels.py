"""What a feedback label may be: one of the model's classes, or a number for a regressor.

Labels are checked when they arrive, so the label store only ever holds values the join with
the prediction log can compare: a label ``"abc"`` for a model whose classes are ``[0, 1]``, or
a string for a regressor, is refused with a :class:`~mlharbor.core.errors.SchemaError` (422)
naming the label and what was expected. An accepted class label is stored as the class value
itself (``"1"`` for class ``1`` is stored as ``1``), so one batch is one column type.

The expectation of an endpoint (:func:`expected_labels`) is read from the registry: the output
signature (task, classes) of every version its routes name; for an endpoint that is not stored
(``mlharbor serve churn@champion`` serves ``churn``), of the versions its logged predictions
name, else of the model it is named after. Without a registry, or when no version declares its
outputs, the only check is that one batch holds one kind of value.

:func:`label_text` is the one canonical text of a class value (``1``, ``1.0`` and ``"1"`` all
read ``"1"``), used to compare labels with predictions whatever column type either was stored
in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import SchemaError

if TYPE_CHECKING:
    from mlharbor.monitoring.predlog import PredictionLog

#: How many classes an error message lists before "...".
_SHOWN = 20


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """The labels an endpoint's models can be scored against.

    ``classes`` is the union of the classifiers' classes (None when no version is a classifier
    with known classes); ``numeric`` is true when a version is a regressor."""

    classes: tuple[Any, ...] | None
    numeric: bool
    models: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.classes is not None:
            shown = ", ".join(repr(c) for c in self.classes[:_SHOWN])
            more = ", ..." if len(self.classes) > _SHOWN else ""
            parts.append(f"one of the classes [{shown}{more}]")
        if self.numeric:
            parts.append("a finite number (regression target)")
        return " or ".join(parts)


def label_text(value: Any) -> str:
    """The canonical text of a label or prediction: integral numbers without ``.0``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # NumPy scalars
        return label_text(value.item())
    return str(value)


def check_labels(labels: list[dict[str, Any]], spec: LabelSpec | None) -> list[Any]:
    """The value to store for each label, or SchemaError naming the first bad one."""
    if spec is None:
        return _one_kind(labels)
    index = {label_text(c): c for c in spec.classes or ()}
    out = []
    for i, item in enumerate(labels):
        label = item["label"]
        if spec.classes is not None and _is_label_scalar(label):
            key = label_text(label)
            if key in index:
                out.append(index[key])
                continue
        if spec.numeric and _is_number(label):
            out.append(float(label))
            continue
        raise SchemaError(
            f"feedback labels[{i}].label: {label!r:.60} is not a label of endpoint's model "
            f"({', '.join(spec.models) or 'unknown'}); expected {spec.describe()}.",
            hint="Send the true class (or target value) of the request's row.",
            field=f"labels[{i}].label", expected=spec.describe(), received=_short(label))
    if len({type(v) for v in out}) > 1:  # classes of several types: store their text
        return [label_text(v) for v in out]
    return out


def expected_labels(registry: Any, endpoint: str, log: PredictionLog | None = None
                    ) -> LabelSpec | None:
    """The :class:`LabelSpec` of ``endpoint``'s models, or None when none is known."""
    if registry is None:
        return None
    from mlharbor.core.errors import MlharborError

    refs = _endpoint_refs(registry, endpoint, log)
    classes: dict[str, Any] = {}
    numeric = False
    known = []
    for ref in refs:
        try:
            version = registry.get_version(ref)
        except MlharborError:  # a route to a version deleted since: nothing to learn
            continue
        outputs = ((version.manifest or {}).get("signature") or {}).get("outputs") or {}
        task = outputs.get("task")
        if task == "classification" and outputs.get("classes") is not None:
            for value in outputs["classes"]:
                classes.setdefault(label_text(value), value)
        elif task == "regression":
            numeric = True
        else:
            continue
        known.append(version.ref)
    if not known:
        return None
    return LabelSpec(tuple(classes.values()) if classes else None, numeric,
                     tuple(dict.fromkeys(known)))


def _endpoint_refs(registry: Any, endpoint: str, log: PredictionLog | None) -> list[str]:
    from mlharbor.core.errors import MlharborError
    from mlharbor.registry.endpoints import EndpointService

    try:
        spec = EndpointService(registry).get(endpoint).spec
        return [route.ref for route in spec.routes]
    except MlharborError:
        pass
    if log is not None:
        refs = _logged_refs(log, endpoint)
        if refs:
            return refs
    return [endpoint]  # `mlharbor serve churn@...` serves an endpoint named after the model


def _logged_refs(log: PredictionLog, endpoint: str) -> list[str]:
    """``model:version`` of the predictions in the endpoint's newest log segment."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = log.segment_names(endpoint)
    if not names:
        return []
    name = names[-1]
    try:
        data = log.segments.get(name)
        if log.sealer is not None and name.endswith(".sealed"):
            data = log.sealer.open(data, name)
        table = pq.read_table(pa.BufferReader(data), columns=["model_ref", "version"])
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return []
    pairs = set(zip(table["model_ref"].to_pylist(), table["version"].to_pylist(), strict=True))
    return sorted(f"{str(ref).split('@')[0].split(':')[0]}:{int(v)}" for ref, v in pairs
                  if ref is not None and v is not None)


def _one_kind(labels: Sequence[dict[str, Any]]) -> list[Any]:
    kinds = {_kind(item["label"]) for item in labels}
    if len(kinds) > 1:
        first = _kind(labels[0]["label"])
        i, odd = next((i, item["label"]) for i, item in enumerate(labels)
                      if _kind(item["label"]) != first)
        raise SchemaError(
            f"feedback labels[{i}].label: {odd!r:.60} is a {_kind(odd)}, but labels[0] is a "
            f"{first}; the labels of one endpoint are all of one kind.",
            hint="Send classes as the model returns them (all numbers or all strings).",
            field=f"labels[{i}].label", expected=first, received=_short(odd))
    return [item["label"] for item in labels]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, int | float) else "string"


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer past the float range
        return False


def _is_label_scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float | str)


def _short(value: Any) -> Any:
    text = repr(value)
    return value if isinstance(value, str) and len(text) <= 200 else text[:200]
