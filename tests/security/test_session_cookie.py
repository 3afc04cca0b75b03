
"""The dashboard's browser session: POST /ui/login, the ``mlharbor_session`` cookie, logout.

The cookie holds a session token standing for an API key, so it must never drive a mutation
(CSRF): the middleware accepts it for GET/HEAD only, and only when no Authorization/X-API-Key
header is sent. Runs against the real control-plane app (``create_app``) on a uvicorn server.
The server-side life of a session (logout, revocation, expiry, both databases) is in
``test_sessions.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from mlharbor.security.routemap import PUBLIC, RouteTable, declared_routes
from mlharbor.settings import Settings
from tests.security import leakwatch
from tests.security.fixtures import bearer

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def session(token: str) -> dict[str, str]:
    """The cookie a browser sends back after logging in (as a header: httpx deprecates
    per-request cookies)."""
    return {"Cookie": f"mlharbor_session={token}"}


def same_origin(client: httpx.Client) -> dict[str, str]:
    """The ``Origin`` a browser sends with a form posted from this server's own page."""
    return {"Origin": str(client.base_url).rstrip("/")}


def _denied(registry: Any) -> list[Any]:
    return [e for e in registry.store.iter_audit() if e.outcome == "denied"]


def _login(client: httpx.Client, key: str, **headers: str) -> httpx.Response:
    """A login expected to be refused, through the watched client (its body is leak-checked);
    posted from the server's own page unless ``headers`` say otherwise."""
    return client.post("/ui/login", data={"key": key},
                       headers=headers or same_origin(client))


def _login_ok(client: httpx.Client, key: str, **headers: str) -> httpx.Response:
    """A login expected to succeed (posted from the server's own page unless ``headers`` say
    otherwise). Its answer carries the session token by design, in the Set-Cookie header
    only, so it goes through an unwatched client and is checked here instead: a 303 with an
    empty body, the key nowhere, the token in exactly that header (and remembered, so the
    leak check finds it anywhere else)."""
    with httpx.Client(base_url=client.base_url, timeout=20) as plain:
        answer = plain.post("/ui/login", data={"key": key},
                            headers=headers or same_origin(client))
    if answer.status_code == 303:
        assert answer.content == b""
        assert not [v for _k, v in answer.headers.multi_items() if key in v]
        token = token_of(answer)
        leakwatch.remember_secret(token)
        assert [v for _k, v in answer.headers.multi_items() if token in v] == [
            answer.headers["set-cookie"]]
    return answer


def token_of(answer: httpx.Response) -> str:
    """The session token a login answer sets in the cookie."""
    first = answer.headers["set-cookie"].split(";")[0]
    name, _, value = first.partition("=")
    assert name == "mlharbor_session" and value, first
    return value


def login(client: httpx.Client, key: str) -> str:
    """Log in with ``key`` as a browser would; the session token."""
    answer = _login_ok(client, key)
    assert answer.status_code == 303, answer.text
    return token_of(answer)


def test_login_sets_a_strict_httponly_session_cookie(client: httpx.Client,
                                                     make_key: Any) -> None:
    key = make_key("viewer")
    form = client.get("/ui/login")
    assert form.status_code == 200 and 'name="key"' in form.text
    assert "default-src 'none'" in form.headers["content-security-policy"]
    answer = _login_ok(client, key)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"
    cookie = answer.headers["set-cookie"]
    parts = [p.strip() for p in cookie.split(";")]
    token = token_of(answer)
    assert token != key and key not in cookie
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(parts)
    assert "Secure" not in parts  # plain HTTP here; see the TLS test below
    cookies = session(token)
    page = client.get("/ui", headers=cookies)
    assert page.status_code == 200 and "dashboard.js" in page.text
    assert client.get("/api/v1/monitoring/alerts", headers=cookies).status_code == 200
    assert client.head("/ui", headers=cookies).status_code != 401
    out = client.post("/ui/logout", headers={**cookies, **same_origin(client)})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert out.headers["set-cookie"].startswith("mlharbor_session=;")
    assert "Max-Age=0" in out.headers["set-cookie"]


def test_the_cookie_never_drives_a_mutation(client: httpx.Client, make_key: Any) -> None:
    admin = make_key("admin")
    cookies = session(login(client, admin))
    assert client.get("/api/v1/models", headers=cookies).status_code == 200
    files = [("files", ("model.bin", b"w", "application/octet-stream"))]
    for method, path, kwargs in (
            ("POST", "/api/v1/models", {"json": {"name": "csrf"}}),
            ("POST", "/api/v1/models/churn/versions", {"files": files}),
            ("PUT", "/api/v1/models/churn/aliases/prod", {"json": {"version": 1}}),
            ("PATCH", "/api/v1/models/churn", {"json": {"description": "x"}}),
            ("DELETE", "/api/v1/models/churn", {}),
            ("POST", "/v1/endpoints/churn/feedback", {"json": {"labels": []}})):
        answer = client.request(method, path, headers=cookies, **kwargs)
        assert answer.status_code == 401, (method, path, answer.status_code)
        assert answer.json()["error"]["code"] == "unauthenticated"
    # Nothing was created by those requests (the admin key itself could have).
    assert client.get("/api/v1/models/csrf", headers=bearer(admin)).status_code == 404


def test_a_header_wins_over_the_cookie(client: httpx.Client, make_key: Any) -> None:
    viewer = make_key("viewer")
    cookies = session(login(client, viewer))
    assert client.get("/api/v1/models", headers=cookies).status_code == 200
    # Any Authorization header, even one that is not a bearer credential, disables the cookie.
    for headers in ({"Authorization": "Basic eDp5"},
                    bearer("mlh_aaaaaaaaaa_" + "b" * 43),
                    {"X-API-Key": "mlh_aaaaaaaaaa_" + "b" * 43}):
        assert client.get("/api/v1/models", headers={**cookies, **headers}
                          ).status_code == 401, headers


def test_a_browser_without_credentials_is_sent_to_the_login_form(
        client: httpx.Client, registry: Any, make_key: Any) -> None:
    before = len(_denied(registry))
    answer = client.get("/ui", headers=HTML)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    assert len(_denied(registry)) == before  # nothing was presented: not an audited denial
    # Scripts (no text/html) still get the JSON 401, audited once.
    plain = client.get("/ui")
    assert plain.status_code == 401 and plain.json()["error"]["code"] == "unauthenticated"
    assert len(_denied(registry)) == before + 1
    # A rejected session cookie is a denial: audited once, then sent to log in again.
    real = login(client, make_key("viewer"))
    stale = client.get("/ui", headers={**HTML, **session(real[:-4] + "AAAA")})
    assert stale.status_code == 303 and stale.headers["location"] == "/ui/login"
    assert len(_denied(registry)) == before + 2
    # The API never redirects.
    assert client.get("/api/v1/models", headers=HTML).status_code == 401


def test_a_wrong_key_answers_401_with_the_form_and_one_audit_record(
        client: httpx.Client, registry: Any, make_key: Any) -> None:
    real = make_key("viewer")
    for wrong in (real[:-4] + "AAAA", "not a key", ""):
        before = len(_denied(registry))
        answer = _login(client, wrong)
        assert answer.status_code == 401
        assert answer.headers["content-type"].startswith("text/html")
        assert 'name="key"' in answer.text and "not valid" in answer.text
        assert "set-cookie" not in answer.headers
        if wrong:
            assert wrong not in answer.text
        records = _denied(registry)[before:]
        assert len(records) == 1, records
        assert records[0].action == "login" and records[0].actor == "anonymous"
        assert wrong not in str(records[0].details) if wrong else True


def test_cross_site_login_and_logout_posts_are_refused(client: httpx.Client,
                                                       make_key: Any) -> None:
    key = make_key("viewer")
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "null"}):
        assert _login(client, key, **headers).status_code == 403, headers
        assert client.post("/ui/logout", headers=headers).status_code == 403, headers
    same = _login_ok(client, key, Origin=str(client.base_url).rstrip("/"))
    assert same.status_code == 303


def test_the_cookie_is_secure_over_tls(app: Any, make_key: Any) -> None:
    import anyio

    key = make_key("viewer")

    async def login_over_tls() -> httpx.Response:  # the ASGI scope says scheme "https"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://127.0.0.1") as tls:
            return await tls.post("/ui/login", data={"key": key},
                                  headers={"Origin": "https://127.0.0.1"})

    answer = anyio.run(login_over_tls)
    assert answer.status_code == 303
    assert "Secure" in [p.strip() for p in answer.headers["set-cookie"].split(";")]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Calling every route without a key fails more often than the default burst (100 failed
    requests) allows, now that the app has more routes than that."""
    return Settings(home=tmp_path / "home", security={"rate_limit_burst": 1000})


def test_only_the_health_probes_and_the_login_form_are_public(
        app: Any, client: httpx.Client) -> None:
    """What tests/api/test_auth_policy.py checks, with the public set read from the table."""
    table: RouteTable = app.state.route_table
    public = {(r.method, r.path) for r in table if r.action == PUBLIC}
    declared = set(declared_routes(app))
    assert public & declared == {("GET", "/livez"), ("GET", "/readyz"), ("GET", "/ui/login"),
                                 ("GET", "/ui/login.js"), ("GET", "/ui/login.css"),
                                 ("POST", "/ui/login"),
                                 ("POST", "/ui/logout")}
    for method, template in sorted(declared - public):
        path = template.replace("{path:path}", "x").replace("{", "").replace("}", "")
        answer = client.request(method, path)
        assert answer.status_code == 401, (method, template, answer.status_code)

