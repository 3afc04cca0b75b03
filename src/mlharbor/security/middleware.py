"""ASGI authentication and authorization for every HTTP surface.

Per request: match the path against the route table (template, path parameters), take the
credential (``Authorization: Bearer`` API key or JWT, or ``X-API-Key``), rate-limit it, look up
the route's rule in the route table and ask the policy. The principal is put on
``request.state.principal`` for routes (``actor_of``). Each refusal (401, 403) writes exactly
one ``denied`` audit record; nothing about the credential itself is ever logged or returned.

Browsers (the dashboard) may instead present a session token in the ``mlharbor_session``
cookie that ``POST /ui/login`` sets: an opaque server-side session (mlharbor.security.sessions)
standing for the API key typed into the form, never the key itself. The cookie is a credential
ONLY for safe methods (GET/HEAD) of plain HTTP requests without an ``Authorization``/
``X-API-Key`` header, and for the three job decisions of COOKIE_POSTS when the request proves
it is the dashboard's own (same origin, its header), so a cross-site request can never use it
to change anything (CSRF), nor open a websocket; and only on an app given a session store
(``add_auth`` gives one; the serving app has none and ignores the cookie). A browser
(``Accept: text/html``) asking for ``/ui`` without a valid credential is redirected (303) to
``/ui/login``: without any credential that is not a denial and writes no audit record; with a
rejected cookie (unknown, ended or expired session, or its key revoked) it is one, audited
once like any other 401.

Public routes (``/livez``, ``/readyz``, the login form) pass untouched. A path no rule matches
never reaches the app (404/405 after authentication): new routes must be added to the table
before anyone, admins included, can call them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlharbor.core.errors import AuthenticationError, LimitExceededError, MlharborError
from mlharbor.security import apikeys
from mlharbor.security.identities import AuditSink, IdentityStore
from mlharbor.security.policy import Principal, allows
from mlharbor.security.ratelimit import RateLimiter
from mlharbor.security.routemap import (
    AUTHENTICATED,
    PUBLIC,
    RouteRule,
    RouteTable,
    declared_routes,
)
from mlharbor.security.sessions import SessionStore
from mlharbor.security.tokens import TokenVerifier
from mlharbor.security.transport import ErrorBody, default_error_body, reply_json

log = logging.getLogger("mlharbor.security")
ANONYMOUS = "anonymous"
SESSION_COOKIE = "mlharbor_session"
SAFE_METHODS = frozenset({"GET", "HEAD"})
# Decisions a person takes on a dashboard page (approve, reject or cancel a job), which the
# session cookie may post too. A cross-site forgery cannot reach them: the cookie is
# SameSite=Strict, the request must prove it comes from this origin (an Origin naming this host,
# or Sec-Fetch-Site: same-origin, as the login form must), and it must carry DASHBOARD_HEADER,
# which no other site can send without a CORS preflight (CORS is closed).
COOKIE_POSTS = re.compile(r"/api/v1/jobs/[0-9A-Za-z_-]{1,64}/(approve|reject|cancel)")
DASHBOARD_HEADER = b"x-mlharbor-dashboard"
# Paths a browser without credentials is sent to the login form from, instead of a JSON 401.
LOGIN_REDIRECTS = frozenset({"/ui"})
LOGIN_PATH = "/ui/login"


# What a cache of verified API keys offers (``mlharbor.serving.auth.CachedIdentities``, built
# around the identity store): ``cached`` answers without I/O or None, ``authenticate_key``
# queries the store on a miss.
KeyCacheFactory = Callable[[IdentityStore], Any]


class AuthMiddleware:
    """Authenticate and authorise every HTTP request and websocket handshake of ``app``.

    ``sessions`` (optional) makes the ``mlharbor_session`` cookie a credential for GET/HEAD;
    without it the cookie is ignored. ``error_body`` shapes refusals per path (the serving
    app's protocols each have their own error body). ``buckets`` gives the paths under a
    prefix their own rate limiter (a training loop's MLflow logging must not spend the key's
    control-plane budget). ``key_cache`` builds a cache of verified API keys around
    ``identities``; it is built afresh whenever ``identities.generation`` moves (a revocation,
    a disabled identity or changed grants in this process), so such a change applies at once.
    """

    def __init__(
        self, app: ASGIApp, *, table: RouteTable, identities: IdentityStore,
        audit: AuditSink | None, limiter: RateLimiter, tokens: TokenVerifier | None = None,
        anonymous: Principal | None = None, sessions: SessionStore | None = None,
        error_body: ErrorBody = default_error_body,
        buckets: Mapping[str, RateLimiter] | None = None,
        key_cache: KeyCacheFactory | None = None,
    ) -> None:
        self.app = app
        self.error_body = error_body
        self.sessions = sessions
        self.anonymous = anonymous
        self.table = table
        self.identities = identities
        self.audit = audit
        self.limiter = limiter
        self.tokens = tokens
        self.buckets = tuple((buckets or {}).items())
        self.key_cache = key_cache
        self._keys: Any = None
        self._keys_generation = -1

    def _limiter_for(self, path: str) -> RateLimiter:
        for prefix, limiter in self.buckets:
            if path.startswith(prefix):
                return limiter
        return self.limiter

    def _key_checker(self) -> Any:
        """What checks API keys: the identity store, or the key cache in front of it (renewed
        when this process changed identities since it was built)."""
        if self.key_cache is None:
            return self.identities
        generation = self.identities.generation
        if self._keys is None or generation != self._keys_generation:
            self._keys, self._keys_generation = self.key_cache(self.identities), generation
        return self._keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # Refusals of a websocket handshake close it (policy violation) instead of replying.
        out = send if scope["type"] == "http" else closing_send(send)
        method = scope.get("method", "GET")
        path = route_path(scope)
        rule, params, path_known = self.table.resolve(method, path)
        if rule is not None and rule.action == PUBLIC:
            await self.app(scope, receive, send)
            return
        action = rule.action if rule else "unknown"
        resource = rule.resource_for(params) if rule else None
        try:
            principal = await self._authenticate(scope)
        except AuthenticationError as exc:
            # The audit's target and the client address are worked out on refusals only.
            target = str(resource) if resource else scope.get("path", "")
            client = (scope.get("client") or ("?", 0))[0]
            if scope["type"] == "http" and wants_login_page(scope, method):
                await self._to_login(scope, out, exc, action, target, client)
                return
            await self._refuse(scope, out, 401, exc, ANONYMOUS, action, target,
                               limit_key=f"anon:{client}")
            return
        except LimitExceededError as exc:
            await self._limited(scope, out, exc)
            return
        except MlharborError as exc:  # the identity database is down: fail closed
            await self._reply(scope, out, 503, exc.code, exc.message, exc.hint)
            return
        try:
            self._limiter_for(path).check(principal.credential)
        except LimitExceededError as exc:
            await self._limited(scope, out, exc)
            return
        if rule is None:
            if path_known:
                allowed = self._allowed(path)
                await self._reply(scope, out, 405, "method_not_allowed",
                                  f"No route {method} {scope.get('path')}; it takes "
                                  f"{', '.join(allowed)}.",
                                  headers=[(b"allow", ", ".join(allowed).encode())])
            else:
                await self._reply(scope, out, 404, "not_found",
                                  f"No route {method} {scope.get('path')}.")
            return
        if rule.action != AUTHENTICATED and not allows(principal, rule.action, resource):
            target = str(resource) if resource else scope.get("path", "")
            await self._refuse(scope, out, 403, _forbidden(principal, rule, target),
                               principal.name, action, target)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> Principal:
        token = credential_of(scope)
        if token is None and self.sessions is not None:
            session = session_credential_of(scope)
            if session is not None:
                return await anyio.to_thread.run_sync(self.sessions.resolve, session)
        if token is None and self.anonymous is not None:
            return self.anonymous
        if token is None:
            raise AuthenticationError(
                "This route needs credentials.",
                hint="Send 'Authorization: Bearer <API key or token>'; an admin creates keys "
                     "with `mlharbor admin keys create`.",
            )
        if apikeys.looks_like_key(token):
            keys = self._key_checker()
            if keys is not self.identities:
                hit = keys.cached(token)  # no I/O: answered on the event loop
                if hit is not None:
                    principal: Principal = hit
                    return principal
            return await anyio.to_thread.run_sync(keys.authenticate_key, token)
        if self.tokens is None:
            raise AuthenticationError(
                "The credential is neither an mlharbor API key nor accepted as a token: no "
                "JWKS is configured.",
                hint="Use an API key (mlh_...) or configure security.jwks_file/jwks_url.",
            )
        if self.tokens.fetches_remote:  # fetching a JWKS may block
            return await anyio.to_thread.run_sync(self.tokens.verify, token)
        return self.tokens.verify(token)

    async def _refuse(
        self, scope: Scope, send: Send, status: int, exc: MlharborError, actor: str,
        action: str, target: str, *, limit_key: str | None = None,
    ) -> None:
        if limit_key is not None:
            # Unauthenticated failures are limited per client address before they are
            # audited, so a flood of bad requests cannot flood the audit trail.
            try:
                self.limiter.check(limit_key)
            except LimitExceededError as limited:
                await self._limited(scope, send, limited)
                return
        await self._record(scope, status, exc, actor, action, target)
        headers = [(b"www-authenticate", b"Bearer")] if status == 401 else []
        await self._reply(scope, send, status, exc.code, exc.message, exc.hint, headers)

    async def _reply(self, scope: Scope, send: Send, status: int, code: str, message: str,
                     hint: str | None = None,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await reply_json(send, status, code, message, hint, headers,
                         body=self.error_body(scope, status, code, message, hint))

    def _allowed(self, path: str) -> list[str]:
        """The methods the route table takes on ``path`` (the ``Allow`` of a 405)."""
        methods = ("GET", "POST", "PUT", "PATCH", "DELETE")
        return [m for m in methods if self.table.resolve(m, path)[0] is not None]

    async def _to_login(self, scope: Scope, send: Send, exc: AuthenticationError,
                        action: str, target: str, client: str) -> None:
        """Send a browser to the login form (303). Only a rejected session cookie is a
        denial worth one audit record (rate-limited per client like any 401); a browser
        that presented nothing is simply asked to log in."""
        try:
            presented = session_credential_of(scope) is not None
        except AuthenticationError:
            presented = True  # an unreadable cookie is a rejected one
        if presented:
            try:
                self.limiter.check(f"anon:{client}")
            except LimitExceededError as limited:
                await self._limited(scope, send, limited)
                return
            await self._record(scope, 401, exc, ANONYMOUS, action, target)
        location = (scope.get("root_path", "") + LOGIN_PATH).encode("latin-1")
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", location), (b"content-length", b"0"),
            (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b""})

    async def _record(self, scope: Scope, status: int, exc: MlharborError, actor: str,
                      action: str, target: str) -> None:
        if self.audit is None:
            return
        state = scope.get("state") or {}
        details = {"method": scope.get("method"), "path": scope.get("path"),
                   "status": status, "reason": exc.code}
        try:
            await anyio.to_thread.run_sync(lambda: self.audit and self.audit(
                actor=actor, action=action, resource=target, outcome="denied",
                details=details, request_id=state.get("request_id")))
        except MlharborError as failure:
            # Refusing still matters more than recording the refusal.
            log.error("could not audit a denied request: %s", failure.code)

    async def _limited(self, scope: Scope, send: Send, exc: LimitExceededError) -> None:
        retry = str(max(1, round(exc.retry_after or 1)))
        await self._reply(scope, send, 429, exc.code, exc.message, exc.hint,
                          [(b"retry-after", retry.encode())])


def closing_send(send: Send) -> Send:
    """A ``send`` that turns an HTTP refusal into closing a websocket handshake (1008)."""
    async def refuse(message: Message) -> None:
        if message["type"] == "http.response.start":
            await send({"type": "websocket.close", "code": 1008})
    return refuse


def route_path(scope: Scope) -> str:
    """The path the app routes on: without the ``root_path`` a proxy mounts it under (as
    Starlette does), so the table and the app always look at the same string."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and len(path) > len(root) and path[len(root)] == "/":
        return path[len(root):]
    return path


def credential_of(scope: Scope) -> str | None:
    """The bearer credential of a request (``Authorization: Bearer`` or ``X-API-Key``).

    None only when the request carries no credential header at all: a header that is present
    but malformed (another scheme, an empty token) is refused, so it can never fall back to
    the anonymous grants.
    """
    for key, value in scope.get("headers") or ():
        if key != b"authorization" and key != b"x-api-key":
            continue
        text = bytes(value).decode("latin-1").strip()
        if key == b"authorization":
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise AuthenticationError(
                "The Authorization header is not 'Bearer <API key or token>'.",
                hint="Send 'Authorization: Bearer mlh_...' (or an OIDC token).",
            )
        if key == b"x-api-key":
            if text:
                return text
            raise AuthenticationError("The X-API-Key header is empty.",
                                      hint="Send the API key, or leave the header out.")
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def session_credential_of(scope: Scope) -> str | None:
    """The session token in the ``mlharbor_session`` cookie, when the request may use it: a
    plain HTTP GET/HEAD, or a dashboard decision (COOKIE_POSTS) proven same-origin (never any
    other mutation, never a websocket handshake), that carries no ``Authorization`` or
    ``X-API-Key`` header."""
    if scope.get("type") != "http":
        return None
    method = str(scope.get("method", "GET")).upper()
    if method not in SAFE_METHODS and not (method == "POST" and _dashboard_decision(scope)):
        return None
    if _header(scope, b"authorization") is not None or _header(scope, b"x-api-key") is not None:
        return None
    cookies = _header(scope, b"cookie")
    if not cookies:
        return None
    from http.cookies import CookieError, SimpleCookie

    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookies)
    except CookieError as exc:
        if SESSION_COOKIE in cookies:  # a broken session must not pass as no session
            raise AuthenticationError("The session cookie cannot be read; log in again.") \
                from exc
        return None
    morsel = jar.get(SESSION_COOKIE)
    value = morsel.value.strip() if morsel is not None else ""
    if not value and f"{SESSION_COOKIE}=" in cookies:
        # Present but unreadable or empty: refused, never taken for "no session".
        raise AuthenticationError("The session cookie cannot be read; log in again.")
    return value or None


def _dashboard_decision(scope: Scope) -> bool:
    """A POST the dashboard makes for a person's decision, from this origin (COOKIE_POSTS)."""
    if not COOKIE_POSTS.fullmatch(route_path(scope)) or _header(scope, DASHBOARD_HEADER) is None:
        return False
    from urllib.parse import urlsplit

    origin, site = _header(scope, b"origin"), _header(scope, b"sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    if origin is not None:
        try:
            return origin != "null" and urlsplit(origin).netloc == _header(scope, b"host")
        except ValueError:
            return False
    return site == "same-origin"


def wants_login_page(scope: Scope, method: str) -> bool:
    """A browser (``Accept: text/html``) asking for a dashboard page with GET/HEAD."""
    return (method.upper() in SAFE_METHODS and route_path(scope) in LOGIN_REDIRECTS
            and "text/html" in (_header(scope, b"accept") or "").lower())


@dataclasses.dataclass(frozen=True, slots=True)
class LoginGate:
    """What ``POST /ui/login`` and ``/ui/logout`` work with (``app.state.login_gate``): the
    same identity store, audit sink, rate limiter and session store as the middleware, and
    ``cookie_secure`` (``security.cookie_secure``: None = Secure over HTTPS only)."""

    identities: IdentityStore
    audit: AuditSink | None
    limiter: RateLimiter
    sessions: SessionStore
    cookie_secure: bool | None = None

    def login(self, key: str, *, client: str, path: str, request_id: str | None) -> str:
        """Check ``key`` (as :meth:`check`) and open a session for it; returns the session
        token for the cookie. Opening it is audited (``session.create``)."""
        principal = self.check(key, client=client, path=path, request_id=request_id)
        return self.sessions.create(principal, request_id=request_id)

    def logout(self, token: str | None, *, request_id: str | None) -> None:
        """End the session of ``token`` server-side (audited ``session.end``); an unknown,
        ended or missing token is nothing to end."""
        if token:
            self.sessions.end(token, request_id=request_id)

    def secure_cookie(self, scheme: str) -> bool:
        """Whether the session cookie gets ``Secure`` for a request made over ``scheme``."""
        return scheme == "https" if self.cookie_secure is None else self.cookie_secure

    def check(self, key: str, *, client: str, path: str, request_id: str | None
              ) -> Principal:
        """The principal holding API key ``key``. A wrong key raises AuthenticationError
        after one ``denied`` audit record (LimitExceededError, unaudited, past the per-client
        limit). Neither the key nor anything derived from it is logged or recorded."""
        try:
            if not apikeys.looks_like_key(key):
                raise AuthenticationError("The API key is not valid.",
                                          hint="Paste the whole key (mlh_...).")
            return self.identities.authenticate_key(key)
        except AuthenticationError as exc:
            self.limiter.check(f"anon:{client}")
            if self.audit is not None:
                try:
                    self.audit(actor=ANONYMOUS, action="login", resource=path,
                               outcome="denied", request_id=request_id,
                               details={"method": "POST", "path": path, "status": 401,
                                        "reason": exc.code})
                except MlharborError as failure:
                    log.error("could not audit a denied login: %s", failure.code)
            raise


def _forbidden(principal: Principal, rule: RouteRule, target: str) -> MlharborError:
    from mlharbor.core.errors import PermissionDeniedError

    roles = ", ".join(str(g) for g in principal.grants) or "none"
    return PermissionDeniedError(
        f"{principal.name!r} may not {rule.action} on {target}: granted roles: {roles}.",
        hint="Ask an admin for a role that allows it (`mlharbor admin policy` lists them).",
    )


# The MLflow REST API's own rate-limit bucket (security.tracking_rate_limit_*).
TRACKING_PREFIX = "/api/2.0/mlflow/"


def add_auth(
    app: Any, *, identities: IdentityStore, audit: AuditSink | None, settings: Any,
    extra_rules: Iterable[RouteRule] = (), error_body: ErrorBody = default_error_body,
    key_cache: KeyCacheFactory | None = None,
) -> RouteTable:
    """Install :class:`AuthMiddleware` on a Starlette/FastAPI app; returns its route table.

    ``key_cache`` (with ``security.key_cache_ttl_s`` > 0) puts a cache of verified keys in
    front of ``identities``; logins and dashboard sessions always ask the store itself.
    """
    from mlharbor.security.routemap import RULES
    from mlharbor.security.tokens import verifier_from_settings

    table = RouteTable([*RULES, *extra_rules])
    sec = settings.security
    limiter = RateLimiter(sec.rate_limit_per_minute, sec.rate_limit_burst)
    tracking = RateLimiter(sec.tracking_rate_limit_per_minute, sec.tracking_rate_limit_burst)
    sessions = SessionStore(identities.engine, identities, ttl_s=sec.session_ttl_s,
                            audit=audit)
    app.add_middleware(
        AuthMiddleware, table=table, identities=identities, audit=audit, limiter=limiter,
        tokens=verifier_from_settings(sec), anonymous=anonymous_principal(sec),
        sessions=sessions, error_body=error_body, buckets={TRACKING_PREFIX: tracking},
        key_cache=key_cache if sec.key_cache_ttl_s > 0 else None,
    )
    app.state.route_table = table
    app.state.sessions = sessions
    app.state.login_gate = LoginGate(identities, audit, limiter, sessions, sec.cookie_secure)
    if hasattr(app, "openapi"):
        _declare_bearer(app)
    if not identities.admin_exists():
        log.warning("no admin exists yet: every request will be refused until one does; "
                    "run `mlharbor admin init` to create the first admin and its API key")
    unlisted = table.missing(declared_routes(app))
    if unlisted:
        log.warning("routes without a policy rule answer 404 until one is added: %s",
                    ", ".join(f"{m} {p}" for m, p in unlisted))
    return table


def _declare_bearer(app: Any) -> None:
    """Tell OpenAPI clients (and /docs' Authorize button) to send a bearer credential."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema: dict[str, Any] = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer",
                             "description": "An mlharbor API key (mlh_...) or an OIDC token."}
        schema["security"] = [{"bearer": []}]
        return schema

    app.openapi = openapi


def add_transport(app: Any, settings: Any) -> None:
    """Install CORS (only when origins are configured) and the transport guard, outermost."""
    from mlharbor.security.transport import TransportGuard, allowed_hosts

    sec = settings.security
    if sec.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(sec.cors_origins),
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["authorization", "content-type", "x-api-key",
                                          "x-request-id"], allow_credentials=False)
    app.add_middleware(
        TransportGuard, hosts=allowed_hosts(sec.allowed_hosts, settings.server.host),
        max_body_bytes=settings.server.max_body_bytes,
    )


def secure_asgi(
    app: Any, *, identities: IdentityStore, audit: AuditSink | None, settings: Any,
    extra_rules: Iterable[RouteRule] = (), sessions: SessionStore | None = None,
) -> Any:
    """Wrap any ASGI app in the transport guard and authentication (dashboard session cookies
    count only when ``sessions`` is given)."""
    from mlharbor.security.routemap import RULES
    from mlharbor.security.tokens import verifier_from_settings

    sec = settings.security
    table = RouteTable([*RULES, *extra_rules])
    guarded = AuthMiddleware(
        app, table=table, identities=identities, audit=audit,
        limiter=RateLimiter(sec.rate_limit_per_minute, sec.rate_limit_burst),
        tokens=verifier_from_settings(sec), anonymous=anonymous_principal(sec),
        sessions=sessions)
    return guard_transport(guarded, settings)


def guard_transport(app: Any, settings: Any, *, body_limit: bool = True,
                    error_body: ErrorBody = default_error_body) -> Any:
    """``app`` behind the transport guard the control plane has: the Host allowlist
    (``security.allowed_hosts``, loopback and ``server.host``) and, with ``body_limit``, the
    body size limit (off for an app that enforces ``server.max_body_bytes`` on every route
    itself, as the serving app does).

    With no allowlist configured and ``server.host`` every interface (0.0.0.0, as in the
    container images), the allowlist holds only for connections arriving on loopback: there a
    browser on the same host can be turned against the server by DNS rebinding, while
    orchestrator probes and load balancers reach the other interfaces under host names
    nobody configured. Configure ``security.allowed_hosts`` to enforce it everywhere.
    """
    from mlharbor.security.transport import ANY_ADDRESSES, TransportGuard, allowed_hosts

    sec = settings.security
    wildcard_bind = (settings.server.host or "") in ANY_ADDRESSES
    return TransportGuard(app, hosts=allowed_hosts(sec.allowed_hosts, settings.server.host),
                          max_body_bytes=settings.server.max_body_bytes if body_limit else None,
                          error_body=error_body,
                          loopback_only=wildcard_bind and not sec.allowed_hosts)


ANONYMOUS_ROLES = frozenset({"viewer", "predictor"})


def anonymous_principal(sec: Any) -> Principal | None:
    """The caller assumed for requests without credentials, when settings grant one."""
    from mlharbor.core.errors import ConfigError
    from mlharbor.security.policy import Grant

    if not sec.anonymous_grants:
        return None
    grants = tuple(Grant.parse(text) for text in sec.anonymous_grants)
    refused = sorted({g.role for g in grants} - ANONYMOUS_ROLES)
    if refused:
        raise ConfigError(
            f"security.anonymous_grants gives role(s) {refused} to callers without "
            "credentials; only viewer and predictor may be granted that way.",
            hint="Give those roles to API keys instead.",
        )
    log.warning("requests without credentials act as %s (security.anonymous_grants)",
                ", ".join(sec.anonymous_grants))
    return Principal(ANONYMOUS, "anonymous", grants, ANONYMOUS)
