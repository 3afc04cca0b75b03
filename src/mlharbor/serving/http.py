"""A lean ASGI layer for the serving hot path: routing, body limits, load shedding, errors.

Starlette's request/response objects and FastAPI's dependency machinery cost more than the
model on a one-row request, so the prediction routes run on this small layer instead: an exact
path table plus a few compiled patterns, bodies read into bytes with a size cap, and responses
sent as two ASGI messages. Each route names its protocol (metrics label, error body shape) and
whether it is a prediction (counted against the concurrency limit).

Limits: a ``Content-Length`` above the limit is refused with 413 before a byte of the body is
read (and a chunked body is cut off as soon as it passes the limit); more predictions in flight
than ``max_concurrency`` are refused at once with 503 and ``Retry-After``; a body in a content
type the route cannot read is refused with 415 before it is read. Every route sits behind the
same limits: an embedded ASGI app (GraphQL) is a route like any other (:func:`asgi_handler`),
handed the body this layer has already read and checked.

A method the path does not take is 405 with ``Allow``; errors take the shape of the protocol
that owns the path (``error_for``), so an Open Inference client gets ``{"error": "..."}`` even
for a path no route matches.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from mlharbor.core.errors import (
    MlharborError,
    NotFoundError,
    PayloadTooLargeError,
    UnavailableError,
    UnsupportedMediaTypeError,
)
from mlharbor.core.requestids import request_id as request_id_of

if TYPE_CHECKING:
    from mlharbor.telemetry.metrics import ServingMetrics

log = logging.getLogger("mlharbor.serving.http")
JSON = b"application/json"

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class Request:
    __slots__ = ("_headers", "body", "endpoint", "method", "params", "path", "query",
                 "raw_headers", "request_id", "scope")

    def __init__(self, scope: dict[str, Any], body: bytes, request_id: str,
                 params: dict[str, str]) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: bytes = scope.get("query_string", b"")
        self.raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        self.body = body
        self.request_id = request_id
        self.params = params
        self.endpoint: str | None = None
        self._headers: dict[bytes, bytes] | None = None

    @property
    def headers(self) -> dict[bytes, bytes]:
        if self._headers is None:
            self._headers = dict(self.raw_headers)
        return self._headers

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")


@dataclasses.dataclass(slots=True)
class Response:
    body: bytes
    status: int = 200
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] | None = None


def json_response(data: Any, status: int = 200,
                  headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status, JSON,
                    headers)


Handler = Callable[[Request], Awaitable[Response]]
ErrorRenderer = Callable[[MlharborError, int], Response]


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """One route. ``predict`` routes count against the concurrency limit (and are shed);
    ``accepts`` lists the media types a route that reads a body can read (a request without
    ``Content-Type`` is read as the first); None for routes that take no body."""

    method: str
    path: str
    handler: Handler
    protocol: str
    render_error: ErrorRenderer
    predict: bool = False
    accepts: tuple[bytes, ...] | None = None


JSON_ONLY = (JSON,)


MAX_MATCHED_PATHS = 4096


class Router:
    """Exact paths in a dict; ``{param}`` paths as compiled patterns, tried in order, and what
    a pattern matched remembered (at most ``MAX_MATCHED_PATHS`` paths), so a request to
    ``/v1/endpoints/churn/predict`` costs a dict lookup after the first, not a walk."""

    def __init__(self) -> None:
        self.exact: dict[tuple[str, str], Route] = {}
        self.patterns: list[tuple[str, re.Pattern[str], Route]] = []
        self.paths: set[str] = set()
        self._matched: dict[tuple[str, str], tuple[Route, dict[str, str]]] = {}

    def add(self, route: Route) -> None:
        self._matched.clear()
        self.paths.add(route.path)
        if "{" not in route.path:
            self.exact[(route.method, route.path)] = route
            return
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/:]+)", re.escape(route.path))
        self.patterns.append((route.method, re.compile(f"^{regex}$"), route))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, params, path_exists) for ``method`` and ``path``."""
        key = (method, path)
        route = self.exact.get(key)
        if route is not None:
            return route, {}, True
        seen = self._matched.get(key)
        if seen is not None:
            return seen[0], dict(seen[1]), True
        found = False
        for m, pattern, candidate in self.patterns:
            hit = pattern.match(path)
            if hit is not None:
                if m == method:
                    params = hit.groupdict()
                    if len(self._matched) >= MAX_MATCHED_PATHS:
                        self._matched.clear()
                    self._matched[key] = (candidate, params)
                    return candidate, dict(params), True
                found = True
        if not found:
            found = any(p == path for (_m, p) in self.exact)
        return None, {}, found

    def allowed(self, path: str) -> list[str]:
        """The methods some route takes on ``path`` (the ``Allow`` of a 405)."""
        methods = {m for (m, p) in self.exact if p == path}
        methods.update(m for m, pattern, _r in self.patterns if pattern.match(path))
        return sorted(methods)


def media_type(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The request's ``Content-Type`` without parameters, lower-cased (None when absent)."""
    for key, value in headers:
        if key == b"content-type":
            return value.split(b";", 1)[0].strip().lower()
    return None


def check_media_type(route: Route, headers: list[tuple[bytes, bytes]]) -> None:
    """Refuse (415) a body in a content type ``route`` cannot read, before reading it."""
    accepts = route.accepts
    if accepts is None:
        return
    given = media_type(headers)
    if given is None or given in accepts:
        return
    names = ", ".join(a.decode() for a in accepts)
    raise UnsupportedMediaTypeError(
        f"{route.method} {route.path} reads {names}; the request body is "
        f"{given.decode('latin-1')[:100]!r}.",
        hint=f"Send 'Content-Type: {accepts[0].decode()}'.", field="Content-Type",
        expected=[a.decode() for a in accepts], received=given.decode("latin-1")[:100])


def asgi_handler(app: ASGIApp) -> Handler:
    """An ASGI app (GraphQL) as a route handler: it gets the body this layer has already read
    under the body limit, and its answer comes back as a :class:`Response`, so it sits behind
    exactly the limits, errors and metrics of every other route."""

    async def handle(request: Request) -> Response:
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            return {"type": "http.disconnect"}

        status = 500
        content_type = JSON
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                for key, value in message.get("headers") or ():
                    name = bytes(key).lower()
                    if name == b"content-type":
                        content_type = bytes(value)
                    elif name not in (b"content-length", b"x-request-id"):
                        headers.append((name, bytes(value)))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await app(request.scope, receive, send)
        return Response(b"".join(chunks), status, content_type, headers or None)

    return handle


class HttpApp:
    """The ASGI callable: limits, request ids, error mapping, metrics around each route."""

    def __init__(
        self, router: Router, *, metrics: ServingMetrics, status_for: Callable[[Any], int],
        max_body_bytes: int, max_concurrency: int, debug: bool = False,
        error_for: Callable[[str], ErrorRenderer], access_log: bool = False,
        lifespan: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.router = router
        self.metrics = metrics
        self.status_for = status_for
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.debug = debug
        self.error_for = error_for
        self.access_log = access_log
        self.lifespan = lifespan
        self.in_flight = 0
        self.handled = 0  # HTTP requests seen: tells a quiet spell from a busy one
        metrics.track_in_flight(lambda: self.in_flight)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websockets: no route takes one; returning without accepting refuses the handshake

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            phase = message["type"].rsplit(".", 1)[-1]
            try:
                if self.lifespan is not None:
                    await self.lifespan(phase)
            except Exception as exc:
                log.exception("lifespan %s failed", phase)
                await send({"type": f"{message['type']}.failed", "message": str(exc)})
                if phase == "startup":
                    return
            else:
                await send({"type": f"{message['type']}.complete"})
            if phase == "shutdown":
                return

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        self.handled += 1
        request_id = request_id_of(scope["headers"])
        route, params, exists = self.router.match(scope["method"], scope["path"])
        request: Request | None = None
        counted = False
        render = self.error_for(scope["path"]) if route is None else route.render_error
        try:
            if route is None:
                if exists:
                    allowed = self.router.allowed(scope["path"])
                    response = render(_MethodNotAllowed(
                        f"{scope['method']} is not allowed on {scope['path']}; it takes "
                        f"{', '.join(allowed)}."), 405)
                    response.headers = [*(response.headers or []),
                                        (b"allow", ", ".join(allowed).encode())]
                else:
                    raise NotFoundError(f"No route {scope['method']} {scope['path']}.")
            else:
                if route.predict:
                    if self.in_flight >= self.max_concurrency:
                        self.metrics.shed.inc()
                        raise OverloadedError(
                            f"The server is at its limit of {self.max_concurrency} "
                            "predictions in flight.", hint="Retry after a second.")
                    self.in_flight += 1
                    counted = True
                if route.accepts is not None:
                    check_media_type(route, scope["headers"])
                body = await self._read_body(scope, receive)
                request = Request(scope, body, request_id, params)
                response = await route.handler(request)
        except MlharborError as exc:
            status = self.status_for(exc)
            response = render(exc, status)
            if isinstance(exc, OverloadedError):
                response.headers = [*(response.headers or []), (b"retry-after", b"1")]
            elif (retry := getattr(exc, "retry_after", None)) is not None:
                # LimitExceededError, and ModelLoadingError (a 503 while a model loads)
                response.headers = [*(response.headers or []),
                                    (b"retry-after", str(max(1, round(retry))).encode())]
        except Exception as exc:
            log.error("unhandled error on %s %s: %s", scope["method"], scope["path"],
                      type(exc).__name__, exc_info=exc, extra={"request_id": request_id})
            response = json_response({"error": {
                "code": "internal_error",
                "message": "The server failed to handle this request; it has been logged.",
                **({"traceback": traceback.format_exception(exc)} if self.debug else {}),
            }}, 500)
        finally:
            if counted:
                self.in_flight -= 1
        headers = [(b"content-type", response.content_type),
                   (b"content-length", str(len(response.body)).encode()),
                   (b"x-request-id", request_id.encode())]
        if response.headers:
            headers.extend(response.headers)
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
        elapsed = time.perf_counter() - started
        protocol = route.protocol if route is not None else "none"
        endpoint = request.endpoint if request is not None else None
        self.metrics.observe_request(protocol, endpoint, response.status, elapsed)
        if self.access_log:
            log.info("%s %s %d", scope["method"], scope["path"], response.status,
                     extra={"request_id": request_id, "status": response.status,
                            "seconds": round(elapsed, 6), "endpoint": endpoint})

    async def _read_body(self, scope: dict[str, Any], receive: Any) -> bytes:
        limit = self.max_body_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    raise PayloadTooLargeError(
                        f"The request body is {declared} bytes; the limit is {limit}.",
                        hint="Send fewer rows per request.", field="body",
                        expected=f"<= {limit} bytes", received=declared)
                break
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(
                    f"The request body passed the limit of {limit} bytes.",
                    hint="Send fewer rows per request.", field="body",
                    expected=f"<= {limit} bytes", received=f"> {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


class _MethodNotAllowed(MlharborError):
    code = "method_not_allowed"


class OverloadedError(UnavailableError):
    """Too many predictions in flight: shed with 503 (UnavailableError's status) + Retry-After."""

    code = "overloaded"
