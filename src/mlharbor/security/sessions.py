"""Dashboard login sessions, kept server-side in the metadata database.

``POST /ui/login`` trades a valid API key for a session; the browser keeps only the session
token in the ``mlharbor_session`` cookie, so the key itself never sits in a cookie jar.

* The token is 256 random bits (``secrets.token_urlsafe(32)``, 43 characters). The database
  keeps only its SHA-256: a leaked database row cannot be replayed, and with 256 bits of
  entropy a fast hash is already beyond brute force (as for API keys, see ``apikeys``).
* A session stands for the API key it was opened with (``key_id``), not for the identity: each
  use re-checks that key as if it had been presented (:meth:`IdentityStore.authenticate_key_id`),
  so revoking or expiring the key, or disabling its identity, ends its sessions at once, and
  the session never grants more than the key does.
* Lifetime is absolute (``security.session_ttl_s`` from login); use does not extend it.
  Logout deletes the row. Rows that can no longer be used (expired, or whose key is revoked or
  expired) are swept whenever someone logs in, so the table stays small without a timer.
* Opening and ending a session are audited (``session.create``/``session.end``) with the
  identity, the key's visible prefix and the row's number; neither the token nor anything
  derived from it (its hash) is ever logged, audited or put in metrics.

The ``sessions`` table is declared with the other security tables in
:mod:`mlharbor.security.schema`; migration ``0004`` creates it and a test checks the two agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    delete,
    or_,
    select,
    update,
)

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import AuthenticationError, MlharborError
from mlharbor.security.schema import api_keys, identities, sessions

if TYPE_CHECKING:
    from mlharbor.security.identities import AuditSink, IdentityStore
    from mlharbor.security.policy import Principal

log = logging.getLogger("mlharbor.security")

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")
# last_seen is informative only: refresh it at most this often, so a dashboard polling the
# API does not turn every read into a database write.
LAST_SEEN_EVERY = timedelta(seconds=60)
RELOGIN_HINT = "Log in again at /ui/login."


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(token: str) -> bool:
    """Whether ``token`` has the shape of a session token (checked before any lookup)."""
    return _TOKEN_RE.fullmatch(token) is not None


class SessionStore:
    """Create, resolve and end dashboard sessions in the database ``engine`` points at.

    ``identities`` re-checks the session's API key on every use; ``audit`` records session
    starts and ends (``MetadataStore.record`` fits); ``ttl_s`` is the absolute lifetime.
    """

    def __init__(self, engine: Engine, identities: IdentityStore, *, ttl_s: float,
                 audit: AuditSink | None = None) -> None:
        self.engine = engine
        self.identities = identities
        self.ttl = timedelta(seconds=ttl_s)
        self.audit = audit

    @contextlib.contextmanager
    def _tx(self, *, write: bool) -> Iterator[Connection]:
        from mlharbor.security.identities import transaction

        with transaction(self.engine, write=write, checking="the login session") as conn:
            yield conn

    def create(self, principal: Principal, *, request_id: str | None = None) -> str:
        """A new session for the API key ``principal`` was authenticated with; returns the
        token (to hand to the browser once, never to store or log)."""
        token = secrets.token_urlsafe(32)
        now = utcnow()
        expires_at = now + self.ttl
        with self._tx(write=True) as conn:
            self._sweep(conn, now)
            key_id = conn.execute(select(api_keys.c.id).where(
                api_keys.c.prefix == principal.credential)).scalar_one_or_none()
            if key_id is None:
                raise AuthenticationError(
                    "Only an mlharbor API key can open a dashboard session.",
                    hint="Log in with an API key (mlh_...).")
            session_id = conn.execute(sessions.insert().values(
                token_hash=hash_token(token), key_id=key_id, created_at=now,
                expires_at=expires_at, last_seen=None,
            ).returning(sessions.c.id)).scalar_one()
        self._audit(principal.name, "session.create", int(session_id), request_id,
                    {"key": principal.credential, "expires_at": expires_at.isoformat()})
        return token

    def resolve(self, token: str) -> Principal:
        """The principal a session token stands for now; AuthenticationError when the token
        is unknown, ended or expired, or its API key is no longer valid."""
        if not looks_like_token(token):
            raise AuthenticationError("The session is not valid.", hint=RELOGIN_HINT)
        now = utcnow()
        with self._tx(write=False) as conn:
            row = conn.execute(select(sessions).where(
                sessions.c.token_hash == hash_token(token))).first()
        if row is None:
            raise AuthenticationError("The session is not valid or has ended.",
                                      hint=RELOGIN_HINT)
        if _aware(row.expires_at) <= now:
            raise AuthenticationError("The session has expired.", hint=RELOGIN_HINT)
        try:
            principal = self.identities.authenticate_key_id(row.key_id)
        except AuthenticationError as exc:
            raise AuthenticationError(f"The session's API key is no longer valid: "
                                      f"{exc.message}", hint=RELOGIN_HINT) from exc
        if row.last_seen is None or now - _aware(row.last_seen) >= LAST_SEEN_EVERY:
            self._touch(row.id, now)
        return principal

    def end(self, token: str, *, request_id: str | None = None) -> bool:
        """End (delete) the session of ``token``; False when there was none to end."""
        if not looks_like_token(token):
            return False
        with self._tx(write=True) as conn:
            row = conn.execute(
                select(sessions.c.id, api_keys.c.prefix, identities.c.name)
                .join(api_keys, api_keys.c.id == sessions.c.key_id)
                .join(identities, identities.c.id == api_keys.c.identity_id)
                .where(sessions.c.token_hash == hash_token(token))).first()
            if row is None:
                return False
            conn.execute(delete(sessions).where(sessions.c.id == row.id))
        self._audit(row.name, "session.end", int(row.id), request_id, {"key": row.prefix})
        return True

    def sweep(self) -> int:
        """Delete every session that can no longer be used; returns how many."""
        with self._tx(write=True) as conn:
            return self._sweep(conn, utcnow())

    def _sweep(self, conn: Connection, now: datetime) -> int:
        dead_keys = select(api_keys.c.id).where(or_(
            api_keys.c.revoked_at.is_not(None), api_keys.c.expires_at <= now))
        gone = conn.execute(delete(sessions).where(or_(
            sessions.c.expires_at <= now, sessions.c.key_id.in_(dead_keys)))).rowcount
        return int(gone or 0)

    def _touch(self, session_id: int, now: datetime) -> None:
        try:
            with self._tx(write=True) as conn:
                conn.execute(update(sessions).where(sessions.c.id == session_id)
                             .values(last_seen=now))
        except MlharborError as exc:
            # Informative only: a busy or read-only database must not refuse the request.
            log.warning("could not record a session's last use: %s", exc.code)

    def _audit(self, actor: str, action: str, session_id: int, request_id: str | None,
               details: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit(actor=actor, action=action, resource=f"session/{session_id}",
                       outcome="success", details=details, request_id=request_id)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
