"""Turning a :class:`PredictionRecord` into log rows, and redacting chosen input columns.

One record answers one request, which may hold many rows; the log keeps one row per predicted
row: ``request_id``, ``row``, ``endpoint``, ``model_ref``, ``version``, ``at`` (epoch
microseconds, UTC), ``latency_s``, ``shadow``, ``fallback``, one ``in.<column>`` per input
column (after redaction), ``prediction`` and, for classifiers, ``score`` (the positive or top
class probability).

Redaction is per endpoint and per column (:class:`Redaction`): ``drop`` removes the column,
``hash`` keeps a salted SHA-256 (joins and distinct counts still work, values do not leak),
``mask`` keeps only that a value was present. It runs before anything touches the disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from mlharbor.core.errors import ConfigError
from mlharbor.core.records import PredictionRecord

INPUT_PREFIX = "in."
ACTIONS = ("drop", "hash", "mask")
MASK = "***"


class Redaction:
    """Per-endpoint column rules: ``{"churn": {"email": "drop", "phone": "hash"}}``."""

    def __init__(self, rules: Mapping[str, Mapping[str, str]] | None = None, *,
                 salt: str = "mlharbor") -> None:
        self.rules: dict[str, dict[str, str]] = {}
        for endpoint, columns in (rules or {}).items():
            for column, action in columns.items():
                if action not in ACTIONS:
                    raise ConfigError(
                        f"Redaction of {endpoint}.{column} is {action!r}.",
                        hint=f"Use one of {', '.join(ACTIONS)}.",
                    )
            self.rules[endpoint] = dict(columns)
        self._salt = salt.encode()

    def apply(self, endpoint: str, row: dict[str, Any]) -> dict[str, Any]:
        rules = self.rules.get(endpoint) or self.rules.get("*")
        if not rules:
            return row
        for column, action in rules.items():
            if column not in row:
                continue
            if action == "drop":
                del row[column]
            elif row[column] is not None:
                row[column] = self._hash(row[column]) if action == "hash" else MASK
        return row

    def _hash(self, value: Any) -> str:
        return hashlib.sha256(self._salt + str(value).encode()).hexdigest()[:32]


def record_rows(record: PredictionRecord, redaction: Redaction | None = None
                ) -> list[dict[str, Any]]:
    """The log rows of one record (inputs redacted)."""
    inputs = input_rows(record.inputs)
    predictions, scores = _outputs(record.outputs)
    count = max(len(inputs), len(predictions), 1)
    at = int(record.at.timestamp() * 1_000_000)
    rows = []
    for i in range(count):
        features = dict(inputs[i]) if i < len(inputs) else {}
        if redaction is not None:
            features = redaction.apply(record.endpoint, features)
        row: dict[str, Any] = {
            "request_id": record.request_id, "row": i, "endpoint": record.endpoint,
            "model_ref": record.model_ref, "version": record.served_version, "at": at,
            "latency_s": record.latency_s, "shadow": record.shadow, "fallback": record.fallback,
            "prediction": _scalar(predictions[i]) if i < len(predictions) else None,
            "score": scores[i] if i < len(scores) else None,
        }
        for key, value in features.items():
            row[INPUT_PREFIX + str(key)] = _scalar(value)
        rows.append(row)
    return rows


def input_rows(data: Any) -> list[dict[str, Any]]:
    """Rows as dicts from the shapes serving accepts (records, columns, one row, frames)."""
    if data is None:
        return []
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        return list(data.to_dict(orient="records"))
    if isinstance(data, Mapping):
        if "inputs" in data and len(data) == 1:
            return input_rows(data["inputs"])
        values = list(data.values())
        if values and all(isinstance(v, list | tuple) or hasattr(v, "tolist") for v in values):
            columns = {k: list(v.tolist() if hasattr(v, "tolist") else v)
                       for k, v in data.items()}
            n = max(len(v) for v in columns.values())
            return [{k: v[i] if i < len(v) else None for k, v in columns.items()}
                    for i in range(n)]
        return [dict(data)]
    if hasattr(data, "tolist"):
        data = data.tolist()
    if isinstance(data, list | tuple):
        rows: list[dict[str, Any]] = []
        for item in data:
            if isinstance(item, Mapping):
                rows.append(dict(item))
            elif isinstance(item, list | tuple):
                rows.append({f"f{j}": v for j, v in enumerate(item)})
            else:
                return [{f"f{j}": v for j, v in enumerate(data)}]  # one row of values
        return rows
    return [{"value": data}]


def _outputs(outputs: Any) -> tuple[list[Any], list[float | None]]:
    """Predictions and a score per row from serving's outputs (or plain lists)."""
    if outputs is None:
        return [], []
    predictions = getattr(outputs, "predictions", None)
    probabilities = getattr(outputs, "probabilities", None)
    if predictions is None:
        if isinstance(outputs, Mapping):
            predictions = outputs.get("predictions", outputs.get("outputs"))
            probabilities = outputs.get("probabilities")
        else:
            predictions = outputs
    preds = predictions.tolist() if hasattr(predictions, "tolist") else list(
        predictions if isinstance(predictions, list | tuple) else [predictions])
    scores: list[float | None] = []
    if probabilities is not None:
        proba = probabilities.tolist() if hasattr(probabilities, "tolist") else probabilities
        for row in proba:
            if isinstance(row, list | tuple):
                scores.append(float(row[-1]) if len(row) == 2 else float(max(row)))
            else:
                scores.append(float(row))
    return preds, scores


def _scalar(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):
        try:
            return value.item()
        except (ValueError, AttributeError):
            return str(value)
    if isinstance(value, list | tuple | dict):
        return str(value)
    return value
