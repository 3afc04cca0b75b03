"""Azure Functions app (Python v2 programming model) answering predictions over HTTP triggers.

The generated ``function_app.py`` is two lines: it imports :func:`create_function_app` and
exposes its result as ``app``. Routes (under the host's ``/api`` prefix): ``POST /predict``
and ``POST /score`` (Azure ML's name) predict, ``GET /health`` reports readiness. Function keys
guard every route (``AuthLevel.FUNCTION``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from mlharbor.core import errors
from mlharbor.deploy.handlers.predictions import PredictionService, status_for


def create_function_app(service: Callable[[], PredictionService] | None = None) -> Any:
    """The ``azure.functions.FunctionApp``; the model loads on the first request."""
    import azure.functions as func

    loaded: list[PredictionService] = []

    def current() -> PredictionService:
        if not loaded:
            loaded.append(service() if service else
                          PredictionService.from_environment(dict(os.environ)))
        return loaded[0]

    def respond(status: int, body: dict[str, Any]) -> func.HttpResponse:
        return func.HttpResponse(json.dumps(body), status_code=status,
                                 mimetype="application/json")

    def answer(req: func.HttpRequest) -> func.HttpResponse:
        try:
            return respond(*current().predict_body(req.get_body()))
        except errors.MlharborError as exc:
            return respond(status_for(exc), {"error": exc.to_dict()})

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.function_name("predict")
    @app.route(route="predict", methods=["POST"])
    def predict(req: func.HttpRequest) -> func.HttpResponse:
        return answer(req)

    @app.function_name("score")
    @app.route(route="score", methods=["POST"])
    def score(req: func.HttpRequest) -> func.HttpResponse:
        return answer(req)

    @app.function_name("health")
    @app.route(route="health", methods=["GET"])
    def health(req: func.HttpRequest) -> func.HttpResponse:
        try:
            return respond(*current().health())
        except errors.MlharborError as exc:
            return respond(status_for(exc), {"error": exc.to_dict()})

    return app
