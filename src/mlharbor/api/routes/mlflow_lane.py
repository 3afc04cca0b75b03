"""A short path to MLflow's REST routes: one dict lookup instead of FastAPI's router walk.

A training loop calling ``mlflow.log_metric`` per step sends thousands of small requests, and
FastAPI 0.165 matches each one against every route of every included router in turn (about
80 route matches before ``/api/2.0/mlflow/runs/log-metric``): measured in process, a third of
the control plane's CPU per logged point. :class:`MlflowLane` sits inside the security
middleware (authentication, authorization and rate limits have already run) and answers the
MLflow routes that take nothing but the request (no path or query parameters for FastAPI to
validate) by calling the very endpoint functions the routers declare, with their errors in
MLflow's shape as :class:`~mlharbor.api.mlflow_protocol.MlflowRoute` renders them. Everything
else, and every route's OpenAPI description, stays with FastAPI.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mlharbor.api.mlflow_protocol import error_response
from mlharbor.api.responses import JsonResponse

Endpoint = Callable[[Request], Awaitable[Any]]


def request_only_routes(routers: Iterable[APIRouter]) -> dict[tuple[str, str], Endpoint]:
    """(method, path) -> endpoint of the routes whose endpoint takes only the request."""
    table: dict[tuple[str, str], Endpoint] = {}
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute) or "{" in route.path:
                continue
            params = list(inspect.signature(route.endpoint).parameters.values())
            if len(params) != 1 or params[0].annotation not in (Request, "Request"):
                continue
            for method in route.methods or ():
                table.setdefault((method, route.path), route.endpoint)
    return table


class MlflowLane:
    """ASGI middleware answering the routes of :func:`request_only_routes` directly."""

    def __init__(self, app: ASGIApp, *, routers: Iterable[APIRouter]) -> None:
        self.app = app
        self.routes = request_only_routes(routers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.routes.get((scope.get("method", ""), scope.get("path", ""))) \
            if scope["type"] == "http" and not scope.get("root_path") else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        response = await answer(endpoint, Request(scope, receive))
        await response(scope, receive, send)


async def answer(endpoint: Endpoint, request: Request) -> Response:
    """What ``endpoint`` returns as a response; any error in MLflow's shape."""
    try:
        result = await endpoint(request)
    except Exception as exc:  # every error: the client must get MLflow's shape
        return error_response(exc)
    return result if isinstance(result, Response) else JsonResponse(result)
