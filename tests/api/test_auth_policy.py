# ruff: noqa: F811  (pytest fixtures are imported by name and requested by name)
"""One policy table drives every route: coverage, 401 without credentials, the role matrix.

Runs against real uvicorn servers on loopback ports. The expected outcomes are generated from
``ROLE_ACTIONS`` and the route table; the observed ones come from HTTP.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from mlharbor.security.policy import ROLE_ACTIONS, ROLES
from mlharbor.security.routemap import AUTHENTICATED, PUBLIC, RULES, RouteTable, declared_routes
from mlharbor.settings import Settings
from tests.security.fixtures import (  # noqa: F401  (fixtures)
    app,
    bearer,
    client,
    identities,
    make_key,
    registry,
    server,
    watched_client,
)

SAMPLE = {"name": "churn", "version": "1", "alias": "champion", "path": "model.bin",
          "reference": "churn:1", "model": "churn"}
TABLE = RouteTable(RULES)


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    """The embedded default, with room for one anonymous request per declared route from
    one address: past ~100 routes the default burst of failed credentials would answer 429
    before the route's 401."""
    return Settings(home=tmp_path / "home", security={"rate_limit_burst": 1000})


def concrete(template: str) -> str:
    return re.sub(r"{(\w+)(:\w+)?}", lambda m: SAMPLE.get(m.group(1), "x"), template)


def serving_app(settings: Settings, registry: Any) -> Any:
    from mlharbor.serving.app import create_serving_app

    return create_serving_app(settings, registry, endpoints=[])


def test_every_route_of_every_app_has_a_policy_rule(app: Any, settings: Settings,
                                                    registry: Any) -> None:
    routes = declared_routes(app)
    assert ("GET", "/api/v1/models/{name}") in routes  # the walker sees included routers
    missing = app.state.route_table.missing(routes)  # the table the app really enforces
    serving = serving_app(settings, registry)
    serving_routes = declared_routes(serving)
    assert serving_routes, "the serving app's routes were not found"
    table = getattr(getattr(serving, "asgi", None), "table", TABLE)
    missing += [(m, f"serving {p}") for m, p in table.missing(serving_routes)]
    assert not missing, f"routes without a rule in mlharbor.security.routemap: {missing}"


def test_without_credentials_every_route_but_health_answers_401(
        app: Any, client: httpx.Client) -> None:
    public = {("GET", "/livez"), ("GET", "/readyz")}
    # Public on purpose, so a browser can log in; tests/security/test_session_cookie.py.
    login_form = {("GET", "/ui/login"), ("GET", "/ui/login.js"), ("GET", "/ui/login.css"),
                  ("POST", "/ui/login"),
                  ("POST", "/ui/logout")}
    seen = 0
    for method, template in declared_routes(app):
        response = client.request(method, concrete(template))
        if (method, template) in public:
            assert response.status_code == 200, (method, template, response.text)
            continue
        if (method, template) in login_form:
            continue
        seen += 1
        assert response.status_code == 401, (method, template, response.status_code)
        assert response.headers["www-authenticate"] == "Bearer"
        if template.startswith("/api/2.0/mlflow"):  # MLflow's clients read MLflow's shape
            assert response.json()["error_code"] == "UNAUTHENTICATED"
        else:
            assert response.json()["error"]["code"] == "unauthenticated"
    assert seen >= 20
    # Unknown paths and bad keys too.
    assert client.get("/api/v1/nothing-here").status_code == 401
    assert client.get("/api/v1/models", headers=bearer("mlh_aaaaaaaaaa_" + "b" * 43)
                      ).status_code == 401
    assert client.get("/api/v1/models", headers={"Authorization": "Basic eDp5"}
                      ).status_code == 401


def _prepare(client: httpx.Client, admin: str) -> None:
    """A model with a version and an alias, so allowed requests find something."""
    h = bearer(admin)
    files = [("files", ("model.bin", b"weights", "application/octet-stream"))]
    assert client.post("/api/v1/models/churn/versions", files=files, headers=h
                       ).status_code == 201
    assert client.put("/api/v1/models/churn/aliases/champion", json={"version": 1},
                      headers=h).status_code == 200


def _body(method: str, template: str) -> dict[str, Any]:
    if template.endswith("/aliases/{alias}") and method == "PUT":
        return {"json": {"version": 1}}
    if template == "/api/v1/models" and method == "POST":
        return {"json": {"name": "other"}}
    if template.endswith("/versions") and method == "POST":
        return {"files": [("files", ("m.bin", b"w", "application/octet-stream"))]}
    if method in ("PATCH",):
        return {"json": {"description": "x"}}
    return {}


def test_role_action_matrix_matches_http(app: Any, client: httpx.Client, make_key: Any) -> None:
    _prepare(client, make_key("admin"))
    keys = {role: make_key(role) for role in ROLES}
    expected: dict[tuple[str, str, str], bool] = {}
    observed: dict[tuple[str, str, str], bool] = {}
    # Reads and writes that leave the prepared state in place go first; deletes last.
    routes = sorted(declared_routes(app), key=lambda r: r[0] == "DELETE")
    for method, template in routes:
        rule = TABLE.lookup(method, template)
        assert rule is not None
        if rule.action == PUBLIC:
            continue
        for role in ("viewer", "predictor", "editor", "deployer"):
            response = client.request(method, concrete(template), headers=bearer(keys[role]),
                                      **_body(method, template))
            assert response.status_code != 401, response.text
            expected[(role, method, template)] = (rule.action == AUTHENTICATED
                                                  or rule.action in ROLE_ACTIONS[role])
            observed[(role, method, template)] = response.status_code != 403
    for method, template in routes:  # admin last: its deletes would remove the fixtures
        rule = TABLE.lookup(method, template)
        if rule is None or rule.action == PUBLIC:
            continue
        response = client.request(method, concrete(template), headers=bearer(keys["admin"]),
                                  **_body(method, template))
        expected[("admin", method, template)] = True
        observed[("admin", method, template)] = response.status_code != 403
    mismatches = {k: (expected[k], observed[k]) for k in expected if expected[k] != observed[k]}
    assert not mismatches, f"(role, method, route): (expected, observed) {mismatches}"


def test_scoped_grant_allows_one_model_only(client: httpx.Client, make_key: Any) -> None:
    admin = bearer(make_key("admin"))
    for name in ("churn", "fraud"):
        files = [("files", ("model.bin", name.encode(), "application/octet-stream"))]
        assert client.post(f"/api/v1/models/{name}/versions", files=files, headers=admin
                           ).status_code == 201
    scoped = bearer(make_key("viewer", "deployer@model:churn"))
    assert client.put("/api/v1/models/churn/aliases/prod", json={"version": 1},
                      headers=scoped).status_code == 200
    assert client.put("/api/v1/models/fraud/aliases/prod", json={"version": 1},
                      headers=scoped).status_code == 403
    only_churn = bearer(make_key("viewer@model:churn"))
    assert client.get("/api/v1/models/churn", headers=only_churn).status_code == 200
    assert client.get("/api/v1/resolve/churn@prod", headers=only_churn).status_code == 200
    assert client.get("/api/v1/models/fraud", headers=only_churn).status_code == 403
    assert client.get("/api/v1/models", headers=only_churn).status_code == 403


@pytest.mark.parametrize("role", ROLES)
def test_policy_matrix_is_documented_by_the_cli_table(role: str) -> None:
    from mlharbor.security.policy import ACTIONS, matrix

    assert set(matrix()[role]) == set(ACTIONS)
    assert {a for a, ok in matrix()[role].items() if ok} == set(ROLE_ACTIONS[role])


def test_audit_records_actor_of_authenticated_changes(client: httpx.Client, make_key: Any,
                                                      registry: Any) -> None:
    key = make_key("editor", name="erin")
    assert client.post("/api/v1/models", json={"name": "audited"}, headers=bearer(key)
                       ).status_code == 201
    events = [e for e in registry.store.iter_audit() if e.action == "model.create"]
    assert events[-1].actor == "erin"
    assert events[-1].outcome == "success"


def test_serving_routes_use_the_same_table(settings: Settings, registry: Any,
                                           identities: Any, make_key: Any) -> None:
    app_ = serving_app(settings, registry)
    from tests.support import LiveServer

    secured = app_  # the serving app installs the security middleware itself (auth=True)
    predictor = bearer(make_key("predictor@endpoint:churn"))
    viewer = bearer(make_key("viewer"))
    with LiveServer(secured) as live, watched_client(live.url) as http:
        for method, template in declared_routes(app_):
            rule = TABLE.lookup(method, template)
            assert rule is not None
            response = http.request(method, concrete(template))
            if rule.action == PUBLIC:
                assert response.status_code != 401, template
                continue
            assert response.status_code == 401, (method, template, response.status_code)
            if rule.action == "predict":
                allowed = http.request(method, concrete(template), headers=predictor,
                                       json={"inputs": []})
                refused = http.request(method, concrete(template), headers=viewer,
                                       json={"inputs": []})
                assert refused.status_code == 403, template
                if rule.resource is None:
                    # An endpoint-scoped key does not reach routes that name no endpoint.
                    assert allowed.status_code == 403, template
                else:
                    assert allowed.status_code != 403, template
        assert http.get("/metrics", headers=viewer).status_code == 200


def test_a_route_missing_from_the_table_is_caught_and_unreachable(
        settings: Settings, registry: Any, make_key: Any) -> None:
    from mlharbor.api.app import create_app
    from tests.support import LiveServer

    fresh = create_app(settings, registry=registry)

    @fresh.get("/api/v1/forgotten")
    def forgotten() -> dict[str, str]:
        return {"secret": "data"}

    assert TABLE.missing(declared_routes(fresh)) == [("GET", "/api/v1/forgotten")]
    admin = bearer(make_key("admin"))
    with LiveServer(fresh) as live, watched_client(live.url) as http:
        assert http.get("/api/v1/forgotten").status_code == 401
        hidden = http.get("/api/v1/forgotten", headers=admin)
        assert hidden.status_code == 404 and "secret" not in hidden.text


def test_require_for_checks_inside_routes() -> None:
    from mlharbor.core.errors import AuthenticationError, PermissionDeniedError
    from mlharbor.security.policy import Grant, Principal, Resource, require

    scoped = Principal("p", "service", (Grant("predictor", "endpoint:fraud-*"),), "c")
    require(scoped, "predict", Resource("endpoint", "fraud-eu"))
    with pytest.raises(PermissionDeniedError):
        require(scoped, "predict", Resource("endpoint", "churn"))
    with pytest.raises(PermissionDeniedError):
        require(scoped, "predict", None)
    with pytest.raises(AuthenticationError):
        require(None, "read")


def test_openapi_declares_the_bearer_scheme(client: httpx.Client, make_key: Any) -> None:
    schema = client.get("/openapi.json", headers=bearer(make_key("viewer"))).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["security"] == [{"bearer": []}]
