"""Score any registered version on new labelled data: ``mlharbor evaluate MODEL:V``.

A version trained by ``mlharbor train`` carries its schema (target, task, features, classes)
and recipe in its lineage. A version registered from a fitted model carries only its bundle
manifest, which is enough: the signature names the input columns, the manifest the task and
the classes; the label column is named by the caller (``target``). Either way the report is
the one training writes for its holdout (metrics with 95% bootstrap intervals, confusion
matrix, curves, and the naive baseline beside them), so the two read alike.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import InvalidInputError, SchemaError

if TYPE_CHECKING:
    import pandas as pd

    from mlharbor.core.records import ModelVersion
    from mlharbor.core.refs import RefLike
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings

TASKS = ("classification", "regression")


@dataclasses.dataclass(frozen=True)
class VersionEvaluation:
    ref: str
    rows: int
    report: dict[str, Any]


def evaluate(
    registry: Registry, ref: RefLike, data: str, *, settings: Settings,
    target: str | None = None, resamples: int = 500,
) -> VersionEvaluation:
    """Score version ``ref`` on the labelled file ``data`` (Python twin of ``mlharbor
    evaluate``); ``target`` names the label column (default: the one training recorded)."""
    from mlharbor.data.loading import load_table
    from mlharbor.evaluation.report import clean_json, score_on_data
    from mlharbor.registry.bundles import load_predictor

    version = registry.get_version(ref)
    dataset = load_table(data, s3_endpoint_url=settings.s3_endpoint_url,
                         s3_region=settings.s3_region)
    frame = dataset.frame
    schema = evaluation_schema(version, frame, target)
    predictor = load_predictor(registry, version, settings)
    report = score_on_data(predictor, frame, schema, version.lineage.get("recipe") or {},
                           resamples=resamples)
    report.update(model_name=version.name, version=version.ref, dataset=dataset.snapshot(),
                  target=schema["target"], stored_metrics=version.metrics)
    return VersionEvaluation(version.ref, int(report["rows"]), clean_json(report))


def evaluation_schema(version: ModelVersion, frame: pd.DataFrame,
                      target: str | None) -> dict[str, Any]:
    """Target, task, features and classes to score ``version`` on ``frame``, checked against it.

    Refused, naming the columns: a missing label column, missing input columns, no labelled
    row, and (classification) labels the model has no class for.
    """
    stored = version.lineage.get("schema")
    if isinstance(stored, dict) and stored.get("target"):
        schema = dict(stored, target=target or stored["target"])
    else:
        schema = _schema_from_manifest(version, frame, target)
    columns = [str(c) for c in frame.columns]
    label = schema["target"]
    if label not in columns:
        raise SchemaError(
            f"The data has no target column {label!r}; its columns are {', '.join(columns)}.",
            hint="Name the label column with --target.", column=label, expected=label,
            received=columns)
    features = list(schema["features"])
    missing = [f for f in features if f not in columns]
    if missing:
        raise SchemaError(
            f"The data lacks the input column(s) {', '.join(map(repr, missing))} of "
            f"{version.ref}; its inputs are {', '.join(features)}.",
            hint="Evaluate on rows with every input column of the model.",
            column=missing[0], expected=features, received=columns)
    labels = frame[label].dropna()
    if labels.empty:
        raise InvalidInputError(f"The target column {label!r} has no value in any row; there "
                                "is nothing to score against.", field="target")
    if schema["task"] == "classification" and schema.get("classes"):
        known = set(schema["classes"])
        unknown = sorted({str(v) for v in labels.unique().tolist() if v not in known})
        if unknown:
            raise SchemaError(
                f"The target column {label!r} holds label(s) {', '.join(unknown[:10])} that "
                f"{version.ref} has no class for; its classes are "
                f"{', '.join(map(str, schema['classes']))}.",
                hint="Check --target names the label column, with the labels used in "
                "training.", column=label)
    return schema


def _schema_from_manifest(version: ModelVersion, frame: pd.DataFrame,
                          target: str | None) -> dict[str, Any]:
    """What the bundle manifest says: inputs from the signature, task and classes."""
    from mlharbor.core.signature import Signature
    from mlharbor.data.schema import infer_task

    manifest = version.manifest
    if manifest is None or not manifest.get("signature"):
        raise InvalidInputError(
            f"Version {version.ref} was stored as raw files: it has no signature to tell its "
            "inputs, so it cannot be evaluated.",
            hint="Register the model with `mlharbor models register` (not --raw).")
    if target is None:
        raise InvalidInputError(
            f"Which column holds the labels? {version.ref} was registered from a fitted "
            "model, so it records no target column.", hint="Pass --target COLUMN.",
            field="target")
    features = list(Signature.from_dict(manifest["signature"]).names)
    if target in features:
        raise InvalidInputError(
            f"--target {target!r} is one of the model's input columns; name the label column.",
            field="target")
    task = manifest.get("task")
    if task not in TASKS:
        labels = frame[target].dropna() if target in frame.columns else frame.iloc[:0, 0]
        task = infer_task(labels)
    classes = list(manifest.get("classes") or [])
    if task == "classification" and not classes and target in frame.columns:
        classes = sorted(frame[target].dropna().unique().tolist(), key=lambda v: (str(type(v)),
                                                                                  v))
    return {"target": target, "task": task, "features": features, "classes": classes}
