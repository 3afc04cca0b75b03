"""Transport guards in front of everything: Host allowlist and request body size limit.

* Host allowlist: a browser tricked by DNS rebinding sends the attacker's host name; only the
  configured names (and loopback) are served; anything else gets 400.
* Body limit: a declared ``Content-Length`` above the limit is refused with 413 before a byte
  of the body is read; bodies without one (chunked) are counted as they stream and refused as
  soon as they pass the limit.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
_ANY_ADDRESS = ("0.0.0.0", "::", "")


def allowed_hosts(configured: Iterable[str], server_host: str | None) -> frozenset[str]:
    hosts = {h.lower() for h in (*LOOPBACK_HOSTS, *configured)}
    if server_host and server_host not in _ANY_ADDRESS:
        hosts.add(server_host.lower())
    return frozenset(hosts)


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body exceeds the limit of {limit} bytes.")


class TransportGuard:
    """Host allowlist + body size limit, as one ASGI layer (outermost)."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str], max_body_bytes: int) -> None:
        self.app = app
        self.hosts = hosts
        self.wildcard = "*" in hosts
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        host = headers.get(b"host", b"").decode("latin-1").lower()
        if not self.wildcard and _strip_port(host) not in self.hosts:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await reply_json(send, 400, "invalid_host",
                         "The Host header names a host this server does not serve.",
                         "Add it to security.allowed_hosts (MLHARBOR_SECURITY__ALLOWED_HOSTS).")
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body
            except ValueError:
                await reply_json(send, 400, "invalid_input", "Content-Length is not a number.")
                return
            if too_big:
                await reply_json(send, 413, "body_too_large", _too_large(self.max_body),
                             "Send a smaller body or raise server.max_body_bytes.")
                return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge(self.max_body)
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
            await reply_json(send, 413, "body_too_large", _too_large(self.max_body))


def _too_large(limit: int) -> str:
    return f"The request body exceeds the limit of {limit} bytes."


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def reply_json(send: Send, status: int, code: str, message: str,
                 hint: str | None = None, headers: list[tuple[bytes, bytes]] | None = None
                 ) -> None:
    error: dict[str, str] = {"code": code, "message": message}
    if hint:
        error["hint"] = hint
    body = orjson.dumps({"error": error})
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": body})


