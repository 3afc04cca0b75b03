"""The MLflow scoring protocol: ``/invocations``, ``/ping``, ``/health``, ``/version``.

A JSON body holds exactly one of ``dataframe_split``, ``dataframe_records``, ``instances`` or
``inputs`` (plus optional ``params``); two of them is an error (400), as in MLflow. ``text/csv``
bodies are read with a header row. The answer is ``{"predictions": [...]}``. The endpoint is the
one this server serves, or the one named by the ``X-Mlharbor-Endpoint`` header. Errors:
``{"error_code": ..., "message": ...}``.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from mlharbor import __version__
from mlharbor.core.errors import InvalidInputError, MlharborError
from mlharbor.serving.http import JSON, Request, Response, Route, json_response
from mlharbor.serving.protocols.payload import answer_headers, jsonable, parse_json, split_frame

if TYPE_CHECKING:
    from mlharbor.serving.core import DataPlane

FORMAT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_ERROR_CODES = {400: "BAD_REQUEST", 404: "RESOURCE_DOES_NOT_EXIST", 413: "BAD_REQUEST",
                422: "BAD_REQUEST", 503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def render_error(exc: MlharborError, status: int) -> Response:
    code = _ERROR_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")
    body: dict[str, Any] = {"error_code": code, "message": str(exc)}
    if exc.details:
        body["details"] = exc.to_dict().get("details")
    return json_response(body, status)


def parse_body(request: Request, names: tuple[str, ...], *, numeric: bool = False) -> Any:
    """The data of an ``/invocations`` body; ``names`` orders rows given as lists, and
    ``numeric`` (a model of numbers only) lets tables of numbers go straight to a matrix."""
    content_type = (request.header(b"content-type") or "application/json").split(";")[0]
    if content_type.strip().lower() == "text/csv":
        return _csv(request.body)
    doc = parse_json(request.body)
    if not isinstance(doc, dict):
        raise InvalidInputError(
            f"The body must be a JSON object with one of {', '.join(FORMAT_KEYS)}.",
            field="body", expected=list(FORMAT_KEYS), received=type(doc).__name__)
    given = [k for k in FORMAT_KEYS if k in doc]
    unknown = sorted(set(doc) - set(FORMAT_KEYS) - {"params"})
    if len(given) != 1 or unknown:
        raise InvalidInputError(
            f"The body must hold exactly one of {', '.join(FORMAT_KEYS)}; it holds "
            f"{', '.join(given + unknown) or 'none'}.", field="body",
            expected=list(FORMAT_KEYS), received=given + unknown)
    key = given[0]
    value = doc[key]
    if key == "dataframe_split":
        if not isinstance(value, dict):
            raise InvalidInputError("dataframe_split must be {columns, data}.",
                                    field=key, expected="object", received=type(value).__name__)
        return split_frame(value, field=key, numeric=numeric)
    if key == "dataframe_records":
        if not isinstance(value, list) or not set(map(type, value)) <= {dict}:
            raise InvalidInputError("dataframe_records must be a list of objects.",
                                    field=key, expected="[{column: value}]",
                                    received=type(value).__name__)
        return value
    # instances / inputs: records, rows in signature order, or {column: values}
    if isinstance(value, dict):
        return value
    if isinstance(value, list) and value:
        kinds = set(map(type, value))  # one pass in C; JSON gives exact dicts and lists
        if kinds == {dict}:
            return value
        if kinds == {list}:
            return split_frame({"columns": list(names), "data": value}, field=key,
                               numeric=numeric)
    raise InvalidInputError(
        f"{key} must be records, rows of values in column order, or {{column: values}}.",
        field=key, expected="list of objects | list of lists | object",
        received=type(value).__name__)


def _csv(body: bytes) -> Any:
    import pandas as pd

    if not body.strip():
        raise InvalidInputError("The CSV body is empty.", field="body")
    try:
        return pd.read_csv(io.BytesIO(body))
    except (ValueError, pd.errors.ParserError) as exc:
        raise InvalidInputError(f"The CSV body cannot be read: {exc}.", field="body",
                                expected="CSV with a header row") from exc


def routes(plane: DataPlane) -> list[Route]:
    async def invocations(request: Request) -> Response:
        name = request.header(b"x-mlharbor-endpoint") or plane.default_name()
        request.endpoint = name
        plan = plane.plan(name)
        model = plan.targets[0].model
        # Handed over, not kept: the data plane may free the parsed body before the batch.
        answer = await plane.predict(name, parse_body(request, model.names,
                                                      numeric=model.numeric),
                                     request_id=request.request_id, headers=request.headers)
        return json_response({"predictions": jsonable(answer.outputs.predictions)},
                             headers=answer_headers(answer))

    async def ping(request: Request) -> Response:
        if plane.ready:
            return Response(b"\n", content_type=b"application/json")
        return json_response({"error_code": "TEMPORARILY_UNAVAILABLE",
                              "message": "Models are not loaded yet."}, 503)

    async def version(request: Request) -> Response:
        return Response(__version__.encode(), content_type=b"text/plain; charset=utf-8")

    return [
        Route("POST", "/invocations", invocations, "mlflow", render_error, predict=True,
              accepts=(JSON, b"text/csv")),
        Route("GET", "/ping", ping, "health", render_error),
        Route("GET", "/health", ping, "health", render_error),
        Route("GET", "/version", version, "mlflow", render_error),
    ]
