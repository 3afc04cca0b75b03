"""Authentication for the serving app: the security layer's middleware and its one route table.

The identity lookup is wrapped in a short-lived cache, because serving must not depend on the
metadata database per request: a key checked in the last ``ttl_s`` seconds is trusted again
without a query (revocations take effect within ``ttl_s``), and while the database is down a
key checked within ``max_stale_s`` keeps working (serving goes on answering; a revocation made
meanwhile cannot be seen, so the window is bounded). Unknown keys are always checked against
the database.

The cache is the middleware's one key lookup (``AuthMiddleware``'s ``key_cache``; the control
plane uses the same class): a hit costs one hash and one dict lookup on the event loop. Under
steady load an entry never expires in front of the requests: a hit older than ``refresh_s``
(half the TTL) has the key checked again by one background thread, and the entry is stamped
with that check's time (never extended without one). Without it, every request in flight
when an entry expired (64 at 64 connections) queued for a thread and a query of its own: that
burst, once per TTL, was most of serving's p99 latency at 64 rows. Misses of one key at once
(a cold start) share one query.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
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

log = logging.getLogger("mlharbor.serving.auth")
MAX_CACHED_KEYS = 10_000
MAX_CACHED_PATHS = 4096
_LOCK_STRIPES = 64
REFRESHER_IDLE_S = 30.0


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

    def __init__(self, inner: Any, *, ttl_s: float = 10.0, max_stale_s: float = 3600.0,
                 refresh_s: float | None = None) -> None:
        self.inner = inner
        self.ttl_s = ttl_s
        self.max_stale_s = max_stale_s
        self.refresh_s = ttl_s / 2 if refresh_s is None else refresh_s
        self._cache: dict[bytes, tuple[Any, float]] = {}
        # Single flight: a key's misses and refreshes take its stripe's lock, so concurrent
        # ones make one query (the others find its answer). Striped: bounded whatever keys
        # are presented.
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._refreshing: set[bytes] = set()
        self._refreshes: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._refresher: threading.Thread | None = None
        self._refresher_lock = threading.Lock()

    def cached(self, key: str) -> Any:
        """The principal of a key checked within ``ttl_s``, or None. No I/O (safe on the event
        loop): past ``refresh_s`` it only queues the key for the background re-check."""
        digest = hashlib.sha256(key.encode()).digest()
        hit = self._cache.get(digest)
        if hit is None:
            return None
        age = time.monotonic() - hit[1]
        if age >= self.ttl_s:
            return None
        if age >= self.refresh_s and digest not in self._refreshing:
            self._refresh_later(key, digest)
        return hit[0]

    def authenticate_key(self, key: str) -> Any:
        digest = hashlib.sha256(key.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None and time.monotonic() - hit[1] < self.ttl_s:
            return hit[0]
        with self._locks[digest[0] % _LOCK_STRIPES]:
            hit = self._cache.get(digest)  # checked meanwhile by a concurrent miss?
            now = time.monotonic()
            if hit is not None and now - hit[1] < self.ttl_s:
                return hit[0]
            return self._check(key, digest, hit, now)

    def _check(self, key: str, digest: bytes, hit: tuple[Any, float] | None,
               now: float) -> Any:
        """Ask the store (the caller holds the key's lock); stamp the answer with ``now``,
        taken before the query."""
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

    def _refresh_later(self, key: str, digest: bytes) -> None:
        self._refreshing.add(digest)
        self._refreshes.put((key, digest))
        with self._refresher_lock:
            if self._refresher is None:
                self._refresher = threading.Thread(target=self._refresh_loop, daemon=True,
                                                   name="mlharbor-key-refresh")
                self._refresher.start()

    def _refresh_loop(self) -> None:
        """Re-check queued keys; exit after ``REFRESHER_IDLE_S`` without any (a cache dropped
        for a newer one leaves no thread behind)."""
        while True:
            try:
                key, digest = self._refreshes.get(timeout=REFRESHER_IDLE_S)
            except queue.Empty:
                with self._refresher_lock:
                    if self._refreshes.empty():
                        self._refresher = None
                        return
                continue
            try:
                with self._locks[digest[0] % _LOCK_STRIPES]:
                    hit = self._cache.get(digest)
                    if hit is not None and time.monotonic() - hit[1] < self.refresh_s:
                        continue  # a miss checked it meanwhile
                    self._check(key, digest, None, time.monotonic())
            except MlharborError:
                # Refused (revoked, expired): the entry is gone, the next request asks the
                # store and is refused. Store down: the entry ages out as it would have.
                pass
            except Exception:
                log.exception("background re-check of an API key failed")
            finally:
                self._refreshing.discard(digest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def with_auth(app: Any, registry: Registry, settings: Settings, store: IdentityStore, *,
              error_body: ErrorBody = default_error_body) -> Any:
    """``app`` behind the security middleware, with the shared route -> action table and the
    key cache as its one key lookup; ``error_body`` shapes its refusals per path (each
    protocol's error body)."""
    from mlharbor.security.middleware import AuthMiddleware, anonymous_principal
    from mlharbor.security.ratelimit import RateLimiter
    from mlharbor.security.routemap import RULES
    from mlharbor.security.tokens import verifier_from_settings

    max_stale_s = settings.serving.key_cache_max_stale_s
    sec = settings.security
    return AuthMiddleware(
        app, table=MemoRouteTable(RULES), identities=store,
        key_cache=lambda inner: CachedIdentities(inner, max_stale_s=max_stale_s),
        audit=registry.store.record,
        limiter=RateLimiter(settings.serving.rate_limit_per_minute,
                            settings.serving.rate_limit_burst),
        tokens=verifier_from_settings(sec), anonymous=anonymous_principal(sec),
        error_body=error_body,
    )
