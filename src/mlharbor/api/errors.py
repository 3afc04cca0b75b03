"""The JSON error body every control-plane route answers with.

Body: ``{"error": {"code": ..., "message": ..., "hint": ..., "details": ...}}``; the status
comes from :mod:`mlharbor.core.status`. Stack traces appear only when debug is on.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlharbor.api.responses import JsonResponse
from mlharbor.core import errors
from mlharbor.core.status import STATUS_BY_ERROR, status_for

__all__ = ["STATUS_BY_ERROR", "error_body", "install_error_handlers", "status_for"]

log = logging.getLogger("mlharbor.api")

def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def install_error_handlers(app: FastAPI, *, debug: bool) -> None:
    @app.exception_handler(errors.MlharborError)
    async def _mlharbor(request: Request, exc: errors.MlharborError) -> JsonResponse:
        headers = {}
        if isinstance(exc, errors.LimitExceededError) and exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        if isinstance(exc, errors.AuthenticationError):
            headers["WWW-Authenticate"] = "Bearer"
        return JsonResponse({"error": exc.to_dict()}, status_code=status_for(exc),
                              headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JsonResponse:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            problems.append({
                "field": ".".join(loc) or "body",
                "message": err.get("msg", "invalid"),
                "expected": err.get("type"),
                "received": _short(err.get("input")),
            })
        first = problems[0] if problems else {"field": "body", "message": "invalid"}
        return JsonResponse(
            error_body("invalid_input", f"{first['field']}: {first['message']}",
                       details=problems),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JsonResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"No route {request.method} {request.url.path}."
        return JsonResponse(error_body(code, message), status_code=exc.status_code,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JsonResponse:
        log.error("unhandled error on %s %s: %s", request.method, request.url.path,
                  type(exc).__name__, exc_info=exc)
        extra: dict[str, Any] = {}
        if debug:
            extra["traceback"] = traceback.format_exception(exc)
        return JsonResponse(
            error_body("internal_error", "The server failed to handle this request; it has "
                       "been logged.", **extra),
            status_code=500,
        )


def _short(value: Any) -> Any:
    """What the client sent, echoed back: a short scalar as itself, anything else (objects,
    long text, integers JSON cannot carry such as 2**64) as at most 200 characters of text."""
    text = repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return text[:200]
    return value if len(text) <= 200 and isinstance(value, str | int | float | bool) \
        else text[:200]
