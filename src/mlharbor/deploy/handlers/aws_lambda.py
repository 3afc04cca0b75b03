"""AWS Lambda handler (container image): API Gateway REST (v1), HTTP API (v2), Function URLs.

The image runs ``python -m awslambdaric mlharbor.deploy.handlers.aws_lambda.handler``. The
model is loaded on the first event and kept for the life of the instance. Routes, whatever the
stage or API prefix: ``POST .../invocations`` and ``POST .../predict`` predict; ``GET
.../ping``, ``.../readyz`` and ``.../livez`` report health. Bodies and answers are described in
:mod:`mlharbor.deploy.handlers.predictions`.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from typing import Any

from mlharbor.core import errors
from mlharbor.deploy.handlers.predictions import PredictionService, status_for

_service: PredictionService | None = None
_lock = threading.Lock()
PREDICT = ("invocations", "predict")
HEALTH = ("ping", "readyz", "livez")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point."""
    try:
        method, path, body = request_of(event)
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if method == "GET" and last in HEALTH:
            status, answer = service().health()
        elif method == "POST" and last in PREDICT:
            status, answer = service().predict_body(body)
        else:
            status, answer = 404, {"error": {
                "code": "not_found", "message": f"No route {method} {path}.",
                "hint": "POST /invocations (or /predict) to predict; GET /ping for health."}}
    except errors.MlharborError as exc:
        status, answer = status_for(exc), {"error": exc.to_dict()}
    return {"statusCode": status, "headers": {"content-type": "application/json"},
            "body": json.dumps(answer), "isBase64Encoded": False}


def request_of(event: dict[str, Any]) -> tuple[str, str, str | None]:
    """Method, path and decoded body of a REST API (v1), HTTP API or Function URL (v2) event."""
    if not isinstance(event, dict):
        raise errors.InvalidInputError("The Lambda event is not an HTTP event object.")
    if event.get("version") == "2.0":  # HTTP API and Function URLs share payload format 2.0
        http = event.get("requestContext", {}).get("http", {})
        method, path = http.get("method", ""), event.get("rawPath") or http.get("path", "/")
    elif "httpMethod" in event:  # REST API, payload format 1.0
        method, path = event["httpMethod"], event.get("path") or "/"
    else:
        raise errors.InvalidInputError(
            "Unsupported Lambda event: expected an API Gateway (REST or HTTP API) or Function "
            "URL event.", hint="Invoke through API Gateway or the function URL.")
    body = event.get("body")
    if body is not None and event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8")
    return str(method).upper(), str(path), body


def service() -> PredictionService:
    global _service
    if _service is None:
        with _lock:
            if _service is None:
                _service = PredictionService.from_environment(dict(os.environ))
    return _service


def install(prepared: PredictionService | None) -> None:
    """Use ``prepared`` instead of loading from the environment (tests, warm pools)."""
    global _service
    _service = prepared
