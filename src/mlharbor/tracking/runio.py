"""How a run's datasets and logged models, in and out, are kept in its row.

The ``inputs`` and ``outputs`` columns hold JSON lists in the shape MLflow's client sends
(``{"dataset": {...}, "tags": [...]}``, ``{"model_id": ...}``, ``{"model_id": ..., "step":
...}``; MLflow 2's ``log-model`` description as ``{"mlmodel": text}``), so rows written before
these records existed read back the same. Reading is lenient (an entry of another shape is
skipped); writing takes only checked records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from mlharbor.core.errors import InvalidInputError
from mlharbor.core.runs import DatasetInput, ModelOutput, RunIO
from mlharbor.tracking import checks

#: Entries one request may add (MLflow's client sends one to a few).
MAX_NEW_ENTRIES = 1000
#: Entries kept per column: a run logging more keeps its latest. Model outputs are kept
#: longer: MLflow registers ``runs:/<run>/<name>`` by the steps of all of a run's outputs.
MAX_INPUTS = 1000
MAX_OUTPUTS = 10_000
#: An MLmodel description MLflow 2's log-model sends (MLflow 3's goes to a logged model).
MAX_MLMODEL_CHARS = 100_000


def merged(stored: Any, new: Sequence[dict[str, Any]], *, limit: int) -> list[dict[str, Any]]:
    """``stored`` with the ``new`` entries it does not already hold appended (the latest
    ``limit``). A dataset is held once per name and digest, the first context logged kept, as
    MLflow keeps it; any other entry once per content."""
    out = [e for e in stored if isinstance(e, dict)] if isinstance(stored, list) else []
    seen = {_key(e) for e in out}
    for entry in new:
        key = _key(entry)
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out[-limit:]


def _key(entry: dict[str, Any]) -> Any:
    dataset = entry.get("dataset")
    if isinstance(dataset, dict):
        return ("dataset", str(dataset.get("name")), str(dataset.get("digest")))
    return orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)


def dataset_entry(dataset: DatasetInput) -> dict[str, Any]:
    return {"dataset": {"name": dataset.name, "digest": dataset.digest,
                        "source_type": dataset.source_type, "source": dataset.source,
                        "schema": dataset.schema, "profile": dataset.profile},
            "tags": [{"key": k, "value": v} for k, v in dataset.tags.items()]}


def model_input_entry(model_id: str) -> dict[str, Any]:
    return {"model_id": model_id}


def model_output_entry(output: ModelOutput) -> dict[str, Any]:
    return {"model_id": output.model_id, "step": output.step}


def mlmodel_entry(mlmodel: str) -> dict[str, Any]:
    return {"mlmodel": mlmodel}


def read(inputs: Any, outputs: Any) -> RunIO:
    """The records of a row's ``inputs`` and ``outputs`` columns."""
    datasets: list[DatasetInput] = []
    model_inputs: list[str] = []
    model_outputs: list[ModelOutput] = []
    for entry in inputs if isinstance(inputs, list) else ():
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("dataset"), dict):
            datasets.append(_dataset(entry["dataset"], entry.get("tags")))
        elif isinstance(entry.get("model_id"), str):
            model_inputs.append(entry["model_id"])
    for entry in outputs if isinstance(outputs, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("model_id"), str):
            step = entry.get("step")
            model_outputs.append(ModelOutput(entry["model_id"], step if type(step) is int
                                             else 0))
    return RunIO(datasets, model_inputs, model_outputs)


def _dataset(fields: dict[str, Any], tags: Any) -> DatasetInput:
    def text(name: str) -> str:
        value = fields.get(name)
        return value if isinstance(value, str) else ""

    pairs = tags if isinstance(tags, list) else []
    return DatasetInput(text("name"), text("digest"), text("source_type"), text("source"),
                        text("schema"), text("profile"),
                        {p["key"]: str(p.get("value", "")) for p in pairs
                         if isinstance(p, dict) and isinstance(p.get("key"), str)})


#: MLflow's own limits on a dataset's description (``mlflow/utils/validation.py``).
_DATASET_LIMITS = {"name": 500, "digest": 36, "source_type": 255, "source": 65_535,
                   "schema": 1_048_575, "profile": 16_384}
_MODEL_ID_CHARS = 100
_INPUT_TAG_VALUE_CHARS = 500


def check_dataset(dataset: DatasetInput, *, field: str) -> DatasetInput:
    """``dataset`` with every field checked (the fields may come unparsed from a route)."""
    values = {name: checks.check_text(getattr(dataset, name), field=f"{field}.{name}",
                                      limit=limit, allow_empty=name in ("schema", "profile"))
              for name, limit in _DATASET_LIMITS.items()}
    if not isinstance(dataset.tags, dict):
        raise InvalidInputError(f"{field}.tags must be key-value pairs.", field=f"{field}.tags")
    tags = {checks.check_key(k, field=f"{field}.tags.key"): checks.check_text(
        v, field=f"{field}.tags.{k}", limit=_INPUT_TAG_VALUE_CHARS)
        for k, v in dataset.tags.items()}
    return DatasetInput(**values, tags=tags)


def check_model_id(model_id: Any, *, field: str) -> str:
    return checks.check_text(model_id, field=field, limit=_MODEL_ID_CHARS, allow_empty=False)


def check_output(output: ModelOutput, *, field: str) -> ModelOutput:
    return ModelOutput(check_model_id(output.model_id, field=f"{field}.model_id"),
                       checks.check_int(output.step, field=f"{field}.step", default=0))
