"""Authentication for the serving app: the security layer's middleware and its one route table.

The identity lookup is wrapped in a short-lived cache, because serving must not depend on the
metadata database per request: a key checked in the last ``ttl_s`` seconds is trusted again
without a query (revocations take effect within ``ttl_s``), and while the database is down a
key checked within ``max_stale_s`` keeps working (serving goes on answering; a revocation made
meanwhile cannot be seen, so the window is bounded). Unknown keys are always checked against
the database.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import AuthenticationError, MlharborError
from mlharbor.security.routemap import RouteRule, RouteTable
from mlharbor.security.transport import ErrorBody, default_error_body

if TYPE_CHECKING:
    from mlharbor.registry.service import Registry
    from mlharbor.security.identities import IdentityStore
    from mlharbor.settings import Settings

MAX_CACHED_KEYS = 10_000
MAX_CACHED_PATHS = 4096


class MemoRouteTable(RouteTable):
    """The route table whose ``resolve`` answers a (method, path) seen before with one dict
    lookup instead of a walk over every rule's pattern (about 60 regular expressions for
    ``/invocations``). The rules never change while the app runs, so an answer stays right;
    the memo holds at most ``MAX_CACHED_PATHS`` paths (a client sending endless distinct paths
    only empties it) and hands out copies of the path parameters."""

    def __init__(self, rules: Iterable[RouteRule]) -> None:
        super().__init__(rules)
        self._memo: dict[tuple[str, str], tuple[RouteRule | None, dict[str, Any], bool]] = {}

    def resolve(self, method: str, path: str) -> tuple[RouteRule | None, dict[str, Any], bool]:
        key = (method, path)
        hit = self._memo.get(key)
        if hit is None:
            hit = super().resolve(method, path)
            if len(self._memo) >= MAX_CACHED_PATHS:
                self._memo.clear()
            self._memo[key] = hit
        rule, params, known = hit
        return rule, dict(params) if params else {}, known


class CachedIdentities:
    """``authenticate_key`` with a TTL cache in front; anything else goes to the real store."""

    def __init__(self, inner: Any, *, ttl_s: float = 10.0, max_stale_s: float = 3600.0) -> None:
        self.inner = inner
        self.ttl_s = ttl_s
        self.max_stale_s = max_stale_s
        self._cache: dict[bytes, tuple[Any, float]] = {}

    def cached(self, key: str) -> Any:
        """The principal of a key checked within ``ttl_s``, or None (no I/O: safe on the loop)."""
        hit = self._cache.get(hashlib.sha256(key.encode()).digest())
        if hit is not None and time.monotonic() - hit[1] < self.ttl_s:
            return hit[0]
        return None

    def authenticate_key(self, key: str) -> Any:
        digest = hashlib.sha256(key.encode()).digest()
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and now - hit[1] < self.ttl_s:
            return hit[0]
        try:
            principal = self.inner.authenticate_key(key)
        except AuthenticationError:
            self._cache.pop(digest, None)
            raise
        except MlharborError:
            # The database is down: a key checked recently enough keeps working.
            if hit is not None and now - hit[1] < self.max_stale_s:
                return hit[0]
            raise
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[digest] = (principal, now)
        return principal

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def with_auth(app: Any, registry: Registry, settings: Settings, store: IdentityStore, *,
              error_body: ErrorBody = default_error_body) -> Any:
    """``app`` behind the security middleware, with the shared route -> action table;
    ``error_body`` shapes its refusals per path (each protocol's error body)."""
    from mlharbor.security.middleware import AuthMiddleware, anonymous_principal, credential_of
    from mlharbor.security.ratelimit import RateLimiter
    from mlharbor.security.routemap import RULES
    from mlharbor.security.tokens import verifier_from_settings

    class ServingAuthMiddleware(AuthMiddleware):
        """Answers recently seen keys from the cache on the event loop (no thread hop)."""

        async def _authenticate(self, scope: Any) -> Any:
            token = credential_of(scope)
            if token is not None:
                principal = identities.cached(token)
                if principal is not None:
                    return principal
            return await super()._authenticate(scope)

    identities = CachedIdentities(store, max_stale_s=settings.serving.key_cache_max_stale_s)
    sec = settings.security
    return ServingAuthMiddleware(
        app, table=MemoRouteTable(RULES),
        identities=identities,  # type: ignore[arg-type]
        audit=registry.store.record,
        limiter=RateLimiter(settings.serving.rate_limit_per_minute,
                            settings.serving.rate_limit_burst),
        tokens=verifier_from_settings(sec), anonymous=anonymous_principal(sec),
        error_body=error_body,
    )
