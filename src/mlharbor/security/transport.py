"""Transport guards in front of everything: Host allowlist and request body size limit.

* Host allowlist: a browser tricked by DNS rebinding sends the attacker's host name; only the
  configured names (and loopback) are served; anything else gets 400.
* Body limit: a declared ``Content-Length`` above the limit is refused with 413 before a byte
  of the body is read; bodies without one (chunked) are counted as they stream and refused as
  soon as they pass the limit. An app that enforces the same limit itself on every route (the
  serving app) passes ``max_body_bytes=None`` and pays nothing for it here.

Refusals are JSON; ``error_body`` lets an app give them its own shape per path (the serving
app answers Open Inference clients ``{"error": "..."}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
ANY_ADDRESSES = ("0.0.0.0", "::", "")
# (scope, status, code, message, hint) -> the JSON body of a refusal
ErrorBody = Callable[[Scope, int, str, str, "str | None"], bytes]


def default_error_body(scope: Scope, status: int, code: str, message: str,
                       hint: str | None) -> bytes:
    """The control plane's error shape: ``{"error": {"code", "message", "hint"}}``."""
    error: dict[str, str] = {"code": code, "message": message}
    if hint:
        error["hint"] = hint
    return orjson.dumps({"error": error})


def allowed_hosts(configured: Iterable[str], server_host: str | None) -> frozenset[str]:
    hosts = {h.lower() for h in (*LOOPBACK_HOSTS, *configured)}
    if server_host and server_host not in ANY_ADDRESSES:
        hosts.add(server_host.lower())
    return frozenset(hosts)


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body exceeds the limit of {limit} bytes.")


class TransportGuard:
    """Host allowlist + body size limit, as one ASGI layer (outermost).

    ``max_body_bytes=None``: no body limit here (the app enforces it on every route).
    ``loopback_only``: the allowlist is enforced only on connections that arrived on a
    loopback address, where DNS rebinding can reach the server from a browser on the same
    host; the serving app uses it when no allowlist is configured and it listens on every
    interface, so orchestrators' probes and load balancers, which name the host however they
    like, keep working.
    """

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str], max_body_bytes: int | None,
                 error_body: ErrorBody = default_error_body,
                 loopback_only: bool = False) -> None:
        self.app = app
        self.hosts = hosts
        self.wildcard = "*" in hosts
        self.max_body = max_body_bytes
        self.error_body = error_body
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self.wildcard and not self._host_allowed(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self._reply(scope, send, 400, "invalid_host",
                              "The Host header names a host this server does not serve.",
                              "Add it to security.allowed_hosts "
                              "(MLHARBOR_SECURITY__ALLOWED_HOSTS).")
            return
        if scope["type"] != "http" or self.max_body is None:
            await self.app(scope, receive, send)
            return
        await self._limited_body(scope, receive, send, self.max_body)

    def _host_allowed(self, scope: Scope) -> bool:
        host = b""
        for key, value in scope.get("headers") or ():
            if key == b"host":
                host = value
                break
        if _strip_port(bytes(host).decode("latin-1").lower()) in self.hosts:
            return True
        if self.loopback_only:
            local = (scope.get("server") or ("", 0))[0] or ""
            return not _is_loopback(local)
        return False

    async def _reply(self, scope: Scope, send: Send, status: int, code: str, message: str,
                     hint: str | None = None) -> None:
        await reply_json(send, status, code, message, hint,
                         body=self.error_body(scope, status, code, message, hint))

    async def _limited_body(self, scope: Scope, receive: Receive, send: Send,
                            limit: int) -> None:
        headers = dict(scope.get("headers") or ())
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                await self._reply(scope, send, 400, "invalid_input",
                                  "Content-Length is not a number.")
                return
            if too_big:
                await self._reply(scope, send, 413, "body_too_large", _too_large(limit),
                                  "Send a smaller body or raise server.max_body_bytes.")
                return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._reply(scope, send, 413, "body_too_large", _too_large(limit))


def _too_large(limit: int) -> str:
    return f"The request body exceeds the limit of {limit} bytes."


def _is_loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address in LOOPBACK_HOSTS


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def reply_json(send: Send, status: int, code: str, message: str,
                     hint: str | None = None, headers: list[tuple[bytes, bytes]] | None = None,
                     *, body: bytes | None = None) -> None:
    """Send one JSON refusal: ``body`` when given (an app's own shape), else the default."""
    if body is None:
        body = default_error_body({}, status, code, message, hint)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": body})


