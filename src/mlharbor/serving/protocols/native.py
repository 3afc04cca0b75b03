"""The native protocol: ``POST /v1/endpoints/{name}/predict``, status and health routes.

Request: records ``[{"col": value}, ...]`` (or one record) or ``{"columns": [...], "data":
[[...]]}``. Answer: ``predictions``, ``probabilities`` and ``classes`` (classifiers), the
``model`` and ``version`` that answered, ``fallback`` when the chain was used, and the
``request_id``. Errors: ``{"error": {"code", "message", "hint", "details"}}`` with the status
from the one mapping in ``api.errors``. Ground truth for answered requests goes to
``POST /v1/endpoints/{name}/feedback`` (the control plane's route, served here too when
predictions are recorded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlharbor import __version__
from mlharbor.core.errors import MlharborError
from mlharbor.serving.http import JSON_ONLY, Request, Response, Route, json_response
from mlharbor.serving.protocols.payload import (
    answer_headers,
    jsonable,
    parse_json,
    records_or_columns,
)

if TYPE_CHECKING:
    from mlharbor.serving.core import DataPlane
    from mlharbor.serving.pool import ModelPool


def render_error(exc: MlharborError, status: int) -> Response:
    return json_response({"error": exc.to_dict()}, status)


FeedbackWriter = Callable[[str, Any], int]


def routes(plane: DataPlane, pool: ModelPool, feedback: FeedbackWriter | None = None
           ) -> list[Route]:
    """The native routes; ``feedback`` (monitoring's label store, when the server records
    predictions) adds ``POST /v1/endpoints/{name}/feedback`` for the endpoints served here."""

    async def predict(request: Request) -> Response:
        name = request.params["name"]
        request.endpoint = name
        # The parsed body is handed over, not kept here: the data plane may free it before
        # the request waits for its batch.
        answer = await plane.predict(name, records_or_columns(parse_json(request.body)),
                                     request_id=request.request_id, headers=request.headers)
        body: dict[str, Any] = {
            "endpoint": name, "model": answer.model.name, "version": answer.version,
            "request_id": request.request_id,
            "predictions": jsonable(answer.outputs.predictions),
        }
        if answer.outputs.probabilities is not None:
            body["probabilities"] = jsonable(answer.outputs.probabilities)
            body["classes"] = answer.classes
        if answer.fallback is not None:
            body["fallback"] = answer.fallback
        return json_response(body, headers=answer_headers(answer))

    async def post_feedback(request: Request) -> Response:
        import asyncio

        name = request.params["name"]
        request.endpoint = name
        plane.plan(name)  # NotFoundError names the endpoints served here
        body = parse_json(request.body)
        assert feedback is not None
        accepted = await asyncio.get_running_loop().run_in_executor(None, feedback, name, body)
        return json_response({"endpoint": name, "accepted": accepted})

    async def list_status(request: Request) -> Response:
        return json_response({
            "ready": plane.ready, "sync_error": plane.sync_error,
            "endpoints": [p.status() for _n, p in sorted(plane.plans.items())],
            "models": pool.status(),
        })

    async def endpoint_status(request: Request) -> Response:
        name = request.params["name"]
        plan = plane.plans.get(name)
        if plan is None:
            plane.plan(name)  # raises NotFoundError naming the served endpoints
            raise AssertionError("unreachable")
        body = plan.status()
        body["models"] = [e.status() for e in pool.entries.values()
                          if any(e.name == r.ref.split("@")[0].split(":")[0]
                                 for r in plan.routes)]
        return json_response(body)

    async def livez(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if plane.ready:
            return json_response({"status": "ready"})
        waiting = [r.to_dict() for p in plane.plans.values() for r in p.routes
                   if p.servable is False]
        return json_response({"error": {
            "code": "unavailable", "message": "Models are not loaded and warmed up yet.",
            "details": {"synced": plane.synced, "sync_error": plane.sync_error,
                        "routes": waiting}}}, 503)

    async def version(request: Request) -> Response:
        return json_response({"name": "mlharbor", "version": __version__})

    extra = [] if feedback is None else [
        Route("POST", "/v1/endpoints/{name}/feedback", post_feedback, "native", render_error,
              accepts=JSON_ONLY)]
    return [
        *extra,
        Route("POST", "/v1/endpoints/{name}/predict", predict, "native", render_error,
              predict=True, accepts=JSON_ONLY),
        Route("GET", "/v1/endpoints", list_status, "native", render_error),
        Route("GET", "/v1/endpoints/{name}", endpoint_status, "native", render_error),
        Route("GET", "/livez", livez, "health", render_error),
        Route("GET", "/readyz", readyz, "health", render_error),
        Route("GET", "/v1/version", version, "native", render_error),
    ]
