"""What every MLflow-compatible route shares: MLflow's error shape, request reading, and the
JSON form of tracking records.

MLflow clients read errors as ``{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}``
and branch on ``error_code`` (``mlflow.register_model`` goes on when a model already exists,
for one), so routes under ``/api/2.0/mlflow*`` answer in that shape: :class:`MlflowRoute`
renders every error of its routes so, with the status from the one map in
:mod:`mlharbor.core.status`. Request bodies are read as MLflow sends them (JSON for POST and
PATCH, query parameters for GET and DELETE), and int64 fields may come as text.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from mlharbor.api.responses import JsonResponse
from mlharbor.core import errors
from mlharbor.core.runs import (
    DatasetInput,
    Experiment,
    LoggedModel,
    MetricPoint,
    ModelOutput,
    Run,
    RunIO,
)
from mlharbor.core.status import status_for

log = logging.getLogger("mlharbor.api.mlflow")

#: mlharbor error class -> MLflow error code (most specific class first).
ERROR_CODES: tuple[tuple[type[errors.MlharborError], str], ...] = (
    (errors.NotFoundError, "RESOURCE_DOES_NOT_EXIST"),
    (errors.ConflictError, "RESOURCE_ALREADY_EXISTS"),
    (errors.AuthenticationError, "UNAUTHENTICATED"),
    (errors.PermissionDeniedError, "PERMISSION_DENIED"),
    (errors.LimitExceededError, "REQUEST_LIMIT_EXCEEDED"),
    (errors.UnavailableError, "TEMPORARILY_UNAVAILABLE"),
    (errors.MlharborError, "INVALID_PARAMETER_VALUE"),
)


#: Paths whose refusals by the security middleware come in MLflow's shape.
MLFLOW_PATHS = ("/api/2.0/mlflow/", "/api/2.0/mlflow-artifacts/")
#: HTTP status of a refusal made before any route -> MLflow error code (as MLflow's own auth).
REFUSAL_CODES = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "ENDPOINT_NOT_FOUND", 405: "ENDPOINT_NOT_FOUND",
                 413: "INVALID_PARAMETER_VALUE", 429: "REQUEST_LIMIT_EXCEEDED",
                 503: "TEMPORARILY_UNAVAILABLE"}


def mlflow_error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"error_code": code, "message": message}, status_code=status)


def refusal_body(scope: Any, status: int, code: str, message: str, hint: str | None) -> bytes:
    """The control plane's refusals before a route (authentication, authorization, rate
    limits, unknown routes): MLflow's ``{"error_code", "message"}`` under the MLflow paths, so
    its clients read ``UNAUTHENTICATED`` / ``PERMISSION_DENIED`` as from MLflow's own auth;
    mlharbor's own shape anywhere else."""
    from mlharbor.security.middleware import route_path
    from mlharbor.security.transport import default_error_body

    if not route_path(scope).startswith(MLFLOW_PATHS):
        return default_error_body(scope, status, code, message, hint)
    text = f"{message} {hint}" if hint else message
    return orjson.dumps({"error_code": REFUSAL_CODES.get(status, "INVALID_PARAMETER_VALUE"),
                         "message": text})


def error_response(exc: BaseException) -> JsonResponse:
    """``exc`` in MLflow's error shape."""
    if isinstance(exc, errors.MlharborError):
        code = next(c for cls, c in ERROR_CODES if isinstance(exc, cls))
        return mlflow_error(code, str(exc), status_for(exc))
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path"))
        return mlflow_error("INVALID_PARAMETER_VALUE",
                            f"{where or 'request'}: {first.get('msg', 'invalid')}", 400)
    log.error("unhandled error in an MLflow route: %s", type(exc).__name__, exc_info=exc)
    return mlflow_error("INTERNAL_ERROR", "The server failed to handle this request; it has "
                        "been logged.", 500)


class MlflowRoute(APIRoute):
    """An APIRoute whose errors, validation included, come out in MLflow's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every error: the client must get MLflow's shape
                return error_response(exc)

        return route


async def body_of(request: Request) -> dict[str, Any]:
    """The request's fields: the query parameters (GET), the JSON object body (POST, PATCH),
    or for DELETE either (MLflow's client sends a JSON body with DELETE)."""
    out: dict[str, Any] = {}
    if request.method in ("GET", "DELETE"):
        for key, value in request.query_params.multi_items():
            if key in out:
                prev = out[key]
                out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
            else:
                out[key] = value
        if request.method == "GET":
            return out
    raw = await request.body()
    if not raw.strip():
        return out
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidInputError(
            f"The request body is not valid JSON: {exc.msg} at position {exc.pos}.",
            hint="Send a JSON object, as MLflow's client does.") from exc
    if not isinstance(data, dict):
        raise errors.InvalidInputError(
            f"The request body must be a JSON object; received {type(data).__name__}.")
    return out | data


def required(body: dict[str, Any], *names: str) -> Any:
    """The first of ``names`` present in ``body`` (``run_id`` or the older ``run_uuid``)."""
    for name in names:
        value = body.get(name)
        if value not in (None, ""):
            return value
    raise errors.InvalidInputError(f"Missing value for required parameter '{names[0]}'.",
                                   field=names[0])


def text_field(body: dict[str, Any], name: str, *, default: str | None = None,
               where: str = "") -> str | None:
    """Field ``name`` of ``body`` as text (``default`` if absent or null); ``where`` names
    the object it sits in (``datasets[0].dataset``) in the error."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, str):
        return value
    label = f"{where}.{name}" if where else name
    raise errors.InvalidInputError(f"'{label}' must be text; received "
                                   f"{errors.describe_value(value)}.", field=label)


def required_text(body: dict[str, Any], name: str) -> str:
    """Field ``name`` of ``body``: present, and text."""
    value = required(body, name)
    if not isinstance(value, str):
        raise errors.InvalidInputError(f"'{name}' must be text; received "
                                       f"{errors.describe_value(value)}.", field=name)
    return value


def key_values(body: dict[str, Any], name: str) -> dict[str, str]:
    """A list of ``{"key": ..., "value": ...}`` (MLflow's tags and params) as a dict."""
    items = body.get(name) or []
    if not isinstance(items, list):
        raise errors.InvalidInputError(f"'{name}' must be a list of {{key, value}} objects.",
                                       field=name)
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise errors.InvalidInputError(f"{name}[{i}] must be an object with a text 'key' "
                                           "and 'value'.", field=f"{name}[{i}]")
        value = item.get("value", "")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise errors.InvalidInputError(f"{name}[{i}].value must be text.",
                                           field=f"{name}[{i}].value")
        out[item["key"]] = str(value)
    return out


def number_json(value: float) -> float | str:
    """A double as proto3 JSON writes it: NaN and infinities as text."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _kv(mapping: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in (sorted(mapping.items()) if len(mapping) > 1
                                                 else mapping.items())]


def experiment_json(exp: Experiment) -> dict[str, Any]:
    return {"experiment_id": exp.experiment_id, "name": exp.name,
            "artifact_location": exp.artifact_location,
            "lifecycle_stage": exp.lifecycle_stage.value,
            "last_update_time": exp.last_update_time, "creation_time": exp.creation_time,
            "tags": _kv(exp.tags)}


def metric_json(point: MetricPoint) -> dict[str, Any]:
    """A point as MLflow's ``Metric`` message (``value - value == 0``: a finite value)."""
    value = point.value
    return {"key": point.key, "value": value if value - value == 0 else number_json(value),
            "timestamp": point.timestamp, "step": point.step}


def run_info_json(run: Run) -> dict[str, Any]:
    # status and lifecycle_stage are text enums: the members themselves render as their text.
    info: dict[str, Any] = {
        "run_id": run.run_id, "run_uuid": run.run_id, "run_name": run.name,
        "experiment_id": run.experiment_id, "user_id": run.user_id,
        "status": run.status, "start_time": run.start_time,
        "artifact_uri": run.artifact_uri, "lifecycle_stage": run.lifecycle_stage}
    if run.end_time is not None:
        info["end_time"] = run.end_time
    return info


def run_json(run: Run, io: RunIO | None = None) -> dict[str, Any]:
    """A run as MLflow's ``Run`` message (a search page renders up to 50,000 of them, without
    their datasets and models: ``io``, which get-run gives)."""
    metrics = run.metrics
    return {"info": run_info_json(run),
            "data": {"metrics": [metric_json(metrics[k]) for k in (
                         sorted(metrics) if len(metrics) > 1 else metrics)],
                     "params": _kv(run.params), "tags": _kv(run.tags)},
            **(_io_json(io) if io is not None else {"inputs": {}, "outputs": {}})}


def _io_json(io: RunIO) -> dict[str, Any]:
    """MLflow's ``RunInputs`` and ``RunOutputs`` (empty lists left out, as proto3 JSON)."""
    inputs: dict[str, Any] = {}
    if io.datasets:
        inputs["dataset_inputs"] = [
            {"tags": [{"key": k, "value": v} for k, v in d.tags.items()],
             "dataset": {"name": d.name, "digest": d.digest, "source_type": d.source_type,
                         "source": d.source,
                         **({"schema": d.schema} if d.schema else {}),
                         **({"profile": d.profile} if d.profile else {})}}
            for d in io.datasets]
    if io.model_inputs:
        inputs["model_inputs"] = [{"model_id": m} for m in io.model_inputs]
    outputs = {"model_outputs": [{"model_id": o.model_id, "step": o.step}
                                 for o in io.model_outputs]} if io.model_outputs else {}
    return {"inputs": inputs, "outputs": outputs}


def _objects(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    items = body.get(name) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise errors.InvalidInputError(f"'{name}' must be a list of objects.", field=name)
    return items


def dataset_inputs(body: dict[str, Any]) -> list[DatasetInput]:
    """The ``datasets`` of a log-inputs request (MLflow's ``DatasetInput`` messages); their
    fields are checked by the store."""
    out = []
    for i, item in enumerate(_objects(body, "datasets")):
        dataset = item.get("dataset")
        if not isinstance(dataset, dict):
            raise errors.InvalidInputError(f"datasets[{i}] must hold a 'dataset' object "
                                           "(name, digest, source_type, source).",
                                           field=f"datasets[{i}].dataset")
        where = f"datasets[{i}].dataset"
        name, digest, source_type, source, schema, profile = (
            text_field(dataset, f, default="", where=where) or "" for f in (
                "name", "digest", "source_type", "source", "schema", "profile"))
        tags = f"datasets[{i}].tags"
        out.append(DatasetInput(name, digest, source_type, source, schema, profile,
                                key_values({tags: item.get("tags")}, tags)))
    return out


def model_inputs(body: dict[str, Any]) -> list[str]:
    """The logged-model ids of a log-inputs request's ``models``."""
    return [text_field(m, "model_id", default="", where=f"models[{i}]") or ""
            for i, m in enumerate(_objects(body, "models"))]


def model_outputs(body: dict[str, Any]) -> list[ModelOutput]:
    """The ``models`` of a log-outputs request (MLflow's ``LoggedModelOutput``: an id and
    the step it was logged at)."""
    # The step (an int64: MLflow's JSON may send it as text) is checked by the store.
    return [ModelOutput(text_field(m, "model_id", default="", where=f"models[{i}]") or "",
                        m.get("step", 0))
            for i, m in enumerate(_objects(body, "models"))]


def logged_model_json(model: LoggedModel) -> dict[str, Any]:
    info: dict[str, Any] = {
        "model_id": model.model_id, "experiment_id": model.experiment_id,
        "name": model.name, "artifact_uri": model.artifact_location,
        "status": model.status, "creation_timestamp_ms": model.creation_time,
        "last_updated_timestamp_ms": model.last_updated_time, "tags": _kv(model.tags)}
    if model.source_run_id:
        info["source_run_id"] = model.source_run_id
    if model.model_type:
        info["model_type"] = model.model_type
    return {"info": info, "data": {"params": _kv(model.params), "metrics": []}}
