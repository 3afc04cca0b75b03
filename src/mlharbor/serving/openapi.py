"""The OpenAPI 3.1 document of the serving app, written as data (the lean routes declare none).

It describes every route the app answers, with the request bodies each protocol accepts, so
clients can be generated and schemathesis can fuzz the whole surface. Kept next to the routes
it describes; a test checks that every route in the router appears here.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from mlharbor import __version__

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {}}}}
_SCALAR = {"type": ["number", "string", "boolean", "null"]}
_RECORD = {"type": "object", "additionalProperties": _SCALAR}
_RECORDS = {"type": "array", "items": _RECORD, "minItems": 1}
_ROWS = {"type": "array", "items": {"type": "array", "items": _SCALAR}, "minItems": 1}
_SPLIT = {"type": "object", "required": ["columns", "data"], "properties": {
    "columns": {"type": "array", "items": {"type": "string"}}, "data": _ROWS}}
_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string", "enum": ["BOOL", "INT32", "INT64", "FP32", "FP64", "BYTES"]},
    "data": {"type": "array"}, "parameters": {"type": "object"}}}
_INFER = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "parameters": {"type": "object"},
    "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
    "outputs": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}
_MLFLOW = {"type": "object", "properties": {
    "dataframe_split": _SPLIT, "dataframe_records": _RECORDS,
    "instances": {"oneOf": [_RECORDS, _ROWS]}, "inputs": {"type": "object"},
    "params": {"type": "object"}}}
_KSERVE = {"type": "object", "properties": {"instances": {"oneOf": [_RECORDS, _ROWS]}}}
_GRAPHQL = {"type": "object", "required": ["query"], "properties": {
    "query": {"type": "string"}, "variables": {"type": ["object", "null"]},
    "operationName": {"type": ["string", "null"]}}}


def _param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"}}


def _op(summary: str, tag: str, params: tuple[str, ...] = (),
        body: dict[str, Any] | None = None, ok: str = "application/json",
        extra: tuple[int, ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary, "tags": [tag], "parameters": [_param(p) for p in params],
        "responses": {"200": {"description": "OK", "content": {ok: {"schema": {}}}},
                      **{str(code): _ERROR for code in (400, 404, 413, 422, *extra)}},
    }
    if body is not None:
        op["responses"]["415"] = _ERROR
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": body}}}
    return op


def _health(summary: str) -> dict[str, Any]:
    return {"get": _op(summary, "health", extra=(503,))}


@functools.cache
def openapi_document() -> bytes:
    """The document as JSON bytes (built once)."""
    v2 = "/v2/models/{model}"
    v2v = "/v2/models/{model}/versions/{version}"
    predict_extra = (503, 504)
    paths: dict[str, Any] = {
        "/": _health("Liveness (KServe v1): {\"status\": \"alive\"}"),
        "/graphql": {"post": _op("GraphQL: models, versions, endpoints; predict mutation",
                                 "graphql", body=_GRAPHQL, extra=(503,))},
        "/v1/endpoints/{name}/predict": {"post": _op(
            "Predict with an endpoint (records or {columns, data})", "native", ("name",),
            {"oneOf": [_RECORDS, _RECORD, _SPLIT]}, extra=predict_extra)},
        "/v1/endpoints/{name}/explain": {"post": _op(
            "Feature attributions per row (endpoints with explain on; 409 otherwise)",
            "native", ("name",), {"oneOf": [_RECORDS, _RECORD, _SPLIT]},
            extra=(*predict_extra, 409))},
        "/v1/endpoints": {"get": _op("Status of every endpoint", "native")},
        "/v1/endpoints/{name}": {"get": _op("Status of one endpoint", "native", ("name",))},
        "/v1/version": {"get": _op("Server version", "native")},
        "/livez": _health("Liveness"),
        "/readyz": _health("Readiness: models loaded and warmed up"),
        "/metrics": {"get": _op("Prometheus metrics", "telemetry", ok="text/plain")},
        "/openapi.json": {"get": _op("This document", "native")},
        "/v2": {"get": _op("Server metadata (Open Inference v2)", "open-inference")},
        "/v2/health/live": _health("Open Inference liveness"),
        "/v2/health/ready": _health("Open Inference readiness"),
        v2: {"get": _op("Model metadata", "open-inference", ("model",), extra=(503,))},
        v2v: {"get": _op("Model version metadata", "open-inference", ("model", "version"),
                         extra=(503,))},
        v2 + "/ready": {"get": _op("Model readiness", "open-inference", ("model",),
                                   extra=(503,))},
        v2v + "/ready": {"get": _op("Model version readiness", "open-inference",
                                    ("model", "version"), extra=(503,))},
        v2 + "/infer": {"post": _op("Inference (JSON or binary tensors)", "open-inference",
                                    ("model",), _INFER, extra=predict_extra)},
        v2v + "/infer": {"post": _op("Inference on one version", "open-inference",
                                     ("model", "version"), _INFER, extra=predict_extra)},
        "/invocations": {"post": _op("MLflow scoring (JSON kinds or text/csv)", "mlflow",
                                     body=_MLFLOW, extra=predict_extra)},
        "/ping": _health("MLflow ping"),
        "/health": _health("MLflow health"),
        "/version": {"get": _op("Server version (MLflow)", "mlflow", ok="text/plain")},
        "/v1/models": {"get": _op("Served models (KServe v1)", "kserve")},
        "/v1/models/{model}": {"get": _op("Model readiness (KServe v1)", "kserve",
                                          ("model",), extra=(503,))},
        "/v1/models/{model}:predict": {"post": _op("Predict (KServe v1)", "kserve",
                                                   ("model",), _KSERVE,
                                                   extra=predict_extra)},
        "/v1/models/{model}:explain": {"post": _op(
            "Feature attributions (KServe v1; endpoints with explain on)", "kserve",
            ("model",), _KSERVE, extra=(*predict_extra, 409))},
    }
    doc = {"openapi": "3.1.0",
           "info": {"title": "mlharbor serving", "version": __version__},
           "paths": paths}
    return orjson.dumps(doc)
