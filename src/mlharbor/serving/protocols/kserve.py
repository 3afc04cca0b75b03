"""The KServe V1 protocol: ``POST /v1/models/{name}:predict``, model list and readiness, and
liveness at ``GET /`` (``{"status": "alive"}``, as KServe's model server answers).

Request ``{"instances": [...]}`` (records, or rows in signature column order) or
``{"inputs": ...}``; answer ``{"predictions": [...]}``. Errors: ``{"error": "message"}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import InvalidInputError, MlharborError
from mlharbor.serving.http import JSON_ONLY, Request, Response, Route, json_response
from mlharbor.serving.protocols.payload import answer_headers, jsonable, parse_json, split_frame

if TYPE_CHECKING:
    from mlharbor.serving.core import DataPlane


def render_error(exc: MlharborError, status: int) -> Response:
    return json_response({"error": str(exc)}, status)


def _instances(doc: Any, names: tuple[str, ...], numeric: bool = False) -> Any:
    if not isinstance(doc, dict):
        raise InvalidInputError("The body must be {\"instances\": [...]}.", field="body",
                                expected="object", received=type(doc).__name__)
    keys = [k for k in ("instances", "inputs") if k in doc]
    if len(keys) != 1:
        raise InvalidInputError("The body must hold exactly one of 'instances' or 'inputs'.",
                                field="instances", expected=["instances", "inputs"],
                                received=sorted(doc))
    value = doc[keys[0]]
    if isinstance(value, list) and value:
        if all(isinstance(r, dict) for r in value):
            return value
        if all(isinstance(r, list) for r in value):
            return split_frame({"columns": list(names), "data": value}, field=keys[0],
                               numeric=numeric)
    if isinstance(value, dict) and value:
        return value
    raise InvalidInputError(
        f"'{keys[0]}' must be a non-empty list of records or of rows in column order "
        f"({', '.join(names)}).", field=keys[0], expected="list", received=type(value).__name__)


def routes(plane: DataPlane) -> list[Route]:
    async def predict(request: Request) -> Response:
        name = request.params["model"]
        request.endpoint = name
        plan = plane.plan(name)
        model = plan.targets[0].model
        # Handed over, not kept: the data plane may free the parsed body before the batch.
        answer = await plane.predict(name, _instances(parse_json(request.body), model.names,
                                                      model.numeric),
                                     request_id=request.request_id, headers=request.headers)
        return json_response({"predictions": jsonable(answer.outputs.predictions)},
                             headers=answer_headers(answer))

    async def model(request: Request) -> Response:
        name = request.params["model"]
        request.endpoint = name
        plan = plane.plan(name)
        return json_response({"name": name, "ready": plan.servable})

    async def models(request: Request) -> Response:
        return json_response({"models": sorted(plane.plans)})

    async def alive(request: Request) -> Response:
        return json_response({"status": "alive"})

    return [
        Route("POST", "/v1/models/{model}:predict", predict, "kserve", render_error,
              predict=True, accepts=JSON_ONLY),
        Route("GET", "/", alive, "health", render_error),
        Route("GET", "/v1/models/{model}", model, "kserve", render_error),
        Route("GET", "/v1/models", models, "kserve", render_error),
    ]
