"""Which protocol's error shape a path gets, for errors raised before (or without) a route.

Each protocol defines its own error body: Open Inference v2 and KServe v1 ``{"error":
"message"}``, MLflow ``{"error_code", "message"}``, the native routes ``{"error": {"code",
"message", "hint", "details"}}``. A route renders its own errors; this module gives the same
shape to what answers before a route does: the Host allowlist, authentication and
authorization, rate limits, 404 for an unknown path and 405 for a wrong method. So a
tritonclient that sends a wrong key reads ``{"error": "..."}`` like any other v2 error.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from mlharbor.core.errors import MlharborError
from mlharbor.serving.http import ErrorRenderer
from mlharbor.serving.protocols import kserve, mlflow, native, open_inference

MLFLOW_PATHS = frozenset({"/invocations", "/ping", "/health", "/version"})


def error_for(path: str) -> ErrorRenderer:
    """The error renderer of the protocol that owns ``path``."""
    if path == "/v2" or path.startswith("/v2/"):
        return open_inference.render_error
    if path == "/" or path == "/v1/models" or path.startswith("/v1/models/"):
        return kserve.render_error
    if path in MLFLOW_PATHS:
        return mlflow.render_error
    return native.render_error


class _Refusal(MlharborError):
    """A refusal made outside the routes (security middleware), with its own code."""

    def __init__(self, code: str, message: str, hint: str | None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


def error_body(scope: MutableMapping[str, Any], status: int, code: str, message: str,
               hint: str | None) -> bytes:
    """The body of a refusal by the security middleware, in the shape of the path's protocol
    (the ``error_body`` hook of :class:`~mlharbor.security.middleware.AuthMiddleware` and
    :class:`~mlharbor.security.transport.TransportGuard`)."""
    render = error_for(scope.get("path", ""))
    return render(_Refusal(code, message, hint), status).body
