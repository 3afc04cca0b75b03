"""Server-side dashboard sessions: an opaque token in the cookie, ended by logout, by revoking
or expiring the API key, and by their own expiry; on SQLite and on PostgreSQL.

Every test runs the real control-plane app (``create_app``) on a uvicorn server, or through
httpx's ASGI transport where the scheme must be HTTPS, against a real database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import select

from mlharbor.api.app import create_app
from mlharbor.core.clock import utcnow
from mlharbor.core.errors import AuthenticationError
from mlharbor.security.schema import sessions
from mlharbor.security.sessions import SessionStore, hash_token
from mlharbor.settings import Settings
from tests.security.fixtures import bearer, watched_client
from tests.security.test_session_cookie import (
    HTML,
    _login_ok,
    login,
    same_origin,
    session,
    token_of,
)
from tests.support import LiveServer, wait_until


@pytest.fixture
def settings(db_settings: Settings) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL."""
    return db_settings


def _with_security(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"security": settings.security.model_copy(update=changes)})


@pytest.fixture
def live(settings: Settings, registry: Any) -> Any:
    """Factory: the app for ``settings`` with some security settings changed, served live."""
    def serve(**changes: Any) -> LiveServer:
        return LiveServer(create_app(_with_security(settings, **changes), registry=registry))
    return serve


def _rows(registry: Any) -> list[Any]:
    with registry.store.db.engine.connect() as conn:
        return list(conn.execute(select(sessions).order_by(sessions.c.id)).all())


def _session_events(registry: Any) -> list[Any]:
    return [e for e in registry.store.iter_audit() if e.action.startswith("session.")]


def _reads(client: httpx.Client, token: str) -> int:
    return client.get("/api/v1/models", headers=session(token)).status_code


def test_the_cookie_is_an_opaque_token_stored_only_as_a_hash(
        client: httpx.Client, registry: Any, make_key: Any) -> None:
    key = make_key("viewer", name="alice")
    token = login(client, key)
    assert token != key and len(token) == 43
    # Nothing of the key is in the token: no 8-character piece of its secret part, no hash.
    secret = key.rsplit("_", 1)[1]
    assert not any(secret[i:i + 8] in token for i in range(len(secret) - 7))
    assert token not in (hashlib.sha256(key.encode()).hexdigest(), key.split("_")[1])
    assert login(client, key) != token  # each login a fresh random token
    rows = _rows(registry)
    assert rows[0].token_hash == hashlib.sha256(token.encode()).hexdigest()
    stored = " ".join(str(v) for r in rows for v in r)
    assert token not in stored and key not in stored
    first = rows[0]
    assert first.expires_at is not None and first.created_at is not None
    lifetime = first.expires_at - first.created_at
    assert lifetime == timedelta(hours=8)
    # Opening the sessions was audited, with the identity, never the token or its hash.
    created = [e for e in _session_events(registry) if e.action == "session.create"]
    assert [(e.actor, e.outcome) for e in created] == [("alice", "success")] * 2
    assert created[0].resource == f"session/{first.id}"
    assert created[0].details["key"] == key.split("_")[1]
    for event in created:
        text = repr(event)
        assert token not in text and hash_token(token) not in text and key not in text


def test_a_session_reads_but_never_writes(client: httpx.Client, make_key: Any) -> None:
    token = login(client, make_key("admin"))
    cookies = session(token)
    assert client.get("/api/v1/models", headers=cookies).status_code == 200
    assert client.get("/ui", headers=cookies).status_code == 200
    assert client.head("/ui", headers=cookies).status_code != 401  # 405 past authentication
    for method, path in (("POST", "/api/v1/models"), ("PUT", "/api/v1/models/m/aliases/a"),
                         ("PATCH", "/api/v1/models/m"), ("DELETE", "/api/v1/models/m")):
        answer = client.request(method, path, headers=cookies, json={"name": "m"})
        assert answer.status_code == 401, (method, path, answer.status_code)
    assert _reads(client, token) == 200  # refusing a mutation does not end the session


def test_logout_ends_the_session_on_the_server(
        client: httpx.Client, registry: Any, make_key: Any) -> None:
    key = make_key("viewer", name="bob")
    token, other = login(client, key), login(client, key)
    assert _reads(client, token) == 200
    out = client.post("/ui/logout", headers={**session(token), **same_origin(client)})
    assert out.status_code == 303 and out.headers["set-cookie"].startswith("mlharbor_session=;")
    # A copy of the old cookie is now worthless: 401 for scripts, the login form for browsers.
    refused = client.get("/api/v1/models", headers=session(token))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
    page = client.get("/ui", headers={**HTML, **session(token)})
    assert page.status_code == 303 and page.headers["location"] == "/ui/login"
    assert [r.token_hash for r in _rows(registry)] == [hash_token(other)]
    assert _reads(client, other) == 200  # only that session ended
    ended = [e for e in _session_events(registry) if e.action == "session.end"]
    assert [(e.actor, e.details) for e in ended] == [("bob", {"key": key.split("_")[1]})]
    # Logging out again (or without any session) is harmless and audits nothing more.
    again = client.post("/ui/logout", headers={**session(token), **same_origin(client)})
    assert again.status_code == 303
    assert len([e for e in _session_events(registry) if e.action == "session.end"]) == 1


def test_revoking_or_disabling_ends_the_sessions_of_that_key(
        client: httpx.Client, registry: Any, identities: Any, make_key: Any) -> None:
    key = make_key("viewer", name="carol")
    spare = make_key("viewer", name="dave")
    first, second, others = login(client, key), login(client, key), login(client, spare)
    assert {_reads(client, t) for t in (first, second, others)} == {200}
    identities.revoke_key(key.split("_")[1], actor="test")
    assert _reads(client, first) == _reads(client, second) == 401
    assert _reads(client, others) == 200
    # The next login sweeps the rows nobody can use any more.
    login(client, spare)
    assert {r.key_id for r in _rows(registry)} == {_key_id(registry, spare)}
    identities.set_disabled("dave", True, actor="test")
    assert _reads(client, others) == 401


def _key_id(registry: Any, key: str) -> int:
    from mlharbor.security.schema import api_keys

    with registry.store.db.engine.connect() as conn:
        return int(conn.execute(select(api_keys.c.id).where(
            api_keys.c.prefix == key.split("_")[1])).scalar_one())


def test_sessions_expire_with_their_ttl_and_with_their_key(
        live: Any, registry: Any, make_key: Any) -> None:
    # Keys are made once the server answers, with expiries seconds away, and expiry is awaited
    # by polling (never a fixed sleep): a loaded machine only makes the test wait longer.
    durable = make_key("viewer")
    with live(session_ttl_s=3.0) as server, watched_client(server.url) as client:
        expires = utcnow() + timedelta(seconds=6)
        short = make_key("viewer", expires_at=expires)
        by_ttl = login(client, durable)
        by_key = login(client, short)
        assert _reads(client, by_ttl) == _reads(client, by_key) == 200
        # Absolute: the session ends although it is read all along (a read that extended it
        # would keep it alive and this wait would time out).
        wait_until(lambda: _reads(client, by_ttl) == 401, 60, "the session's TTL ended it")
        refused = client.get("/ui", headers={**HTML, **session(by_ttl)})
        assert refused.status_code == 303 and refused.headers["location"] == "/ui/login"
        assert client.get("/api/v1/models", headers=bearer(durable)).status_code == 200
        wait_until(lambda: utcnow() > expires + timedelta(seconds=0.1), 60, "the key expired")
        # The key expired before a fresh session's TTL would have: refused, and so is the
        # session made with it.
        assert client.post("/ui/login", data={"key": short},
                           headers=same_origin(client)).status_code == 401
        assert _reads(client, by_key) == 401
        fresh = login(client, durable)  # logging in sweeps both dead rows
        assert [r.token_hash for r in _rows(registry)] == [hash_token(fresh)]


def test_a_session_of_a_key_that_expires_first_ends_with_the_key(
        live: Any, make_key: Any) -> None:
    with live() as server, watched_client(server.url) as client:
        expires = utcnow() + timedelta(seconds=3)
        key = make_key("viewer", expires_at=expires)
        token = login(client, key)  # the session itself would last 8 hours
        assert _reads(client, token) == 200
        wait_until(lambda: utcnow() > expires + timedelta(seconds=0.1), 60, "the key expired")
        assert _reads(client, token) == 401


@pytest.mark.parametrize(("cookie_secure", "scheme", "secure"), [
    (True, "http", True), (False, "https", False), (None, "https", True), (None, "http", False),
])
def test_cookie_secure_setting(cookie_secure: bool | None, scheme: str, secure: bool,
                               settings: Settings, registry: Any, make_key: Any) -> None:
    """True forces Secure over plain HTTP (TLS ended at a proxy); False never; None follows
    the request's scheme. Login and logout set the same attributes."""
    key = make_key("viewer")
    app = create_app(_with_security(settings, cookie_secure=cookie_secure), registry=registry)
    origin = {"Origin": f"{scheme}://127.0.0.1"}

    async def login_and_out() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport,
                                     base_url=f"{scheme}://127.0.0.1") as browser:
            answer = await browser.post("/ui/login", data={"key": key}, headers=origin)
            out = await browser.post("/ui/logout", headers={
                **origin, **session(token_of(answer))})
            return answer, out

    answer, out = anyio.run(login_and_out)
    assert answer.status_code == 303 and out.status_code == 303
    for response in (answer, out):
        parts = [p.strip() for p in response.headers["set-cookie"].split(";")]
        assert ("Secure" in parts) is secure, (response.request.url, parts)


@pytest.mark.parametrize("headers", [
    {},
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "none"},
    {"Origin": "http://127.0.0.1:1"},  # another port is another origin
    {"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"},
], ids=["neither", "foreign-origin", "null-origin", "cross-site", "same-site", "typed-url",
        "other-port", "contradicting"])
def test_login_and_logout_need_proof_of_this_origin(
        client: httpx.Client, registry: Any, make_key: Any, headers: dict[str, str]) -> None:
    key = make_key("viewer")
    token = login(client, key)
    before = len(_rows(registry))
    refused = client.post("/ui/login", data={"key": key}, headers=headers)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "permission_denied"
    if not headers:
        assert "neither an Origin header" in refused.json()["error"]["message"]
    assert "set-cookie" not in refused.headers and len(_rows(registry)) == before
    out = client.post("/ui/logout", headers={**headers, **session(token)})
    assert out.status_code == 403 and "set-cookie" not in out.headers
    assert _reads(client, token) == 200  # a refused logout ends nothing


def test_either_proof_of_this_origin_is_enough(client: httpx.Client, make_key: Any) -> None:
    key = make_key("viewer")
    for headers in (same_origin(client), {"Sec-Fetch-Site": "same-origin"},
                    {**same_origin(client), "Sec-Fetch-Site": "same-origin"}):
        answer = _login_ok(client, key, **headers)
        assert answer.status_code == 303, (headers, answer.text)
        token = token_of(answer)
        out = client.post("/ui/logout", headers={**headers, **session(token)})
        assert out.status_code == 303
        assert _reads(client, token) == 401


@pytest.fixture
def store(registry: Any, identities: Any) -> Iterator[SessionStore]:
    yield SessionStore(registry.store.db.engine, identities, ttl_s=60,
                       audit=registry.store.record)


def test_the_store_refuses_what_it_did_not_issue(store: SessionStore, identities: Any,
                                                 make_key: Any) -> None:
    principal = identities.authenticate_key(make_key("viewer", name="erin"))
    token = store.create(principal)
    assert store.resolve(token).name == "erin"
    for bogus in ("", "mlh_" + "a" * 39, token[:-1], token[:-1] + ("A" if token[-1] != "A"
                                                                    else "B")):
        with pytest.raises(AuthenticationError, match="session"):
            store.resolve(bogus)
    assert not store.end(token[:-1] + "x" if token[-1] != "x" else token[:-1] + "y")
    assert store.end(token) and not store.end(token)
    with pytest.raises(AuthenticationError, match="not valid or has ended"):
        store.resolve(token)
    assert store.sweep() == 0


def test_the_migration_creates_the_sessions_table_as_declared(registry: Any) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from mlharbor.security.schema import metadata
    from tests.security.test_schema_and_roles import _table_of

    with registry.store.db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = [d for d in compare_metadata(context, metadata) if _table_of(d) == "sessions"]
    assert diff == []
