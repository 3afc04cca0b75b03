# ruff: noqa: F811  (pytest fixtures are imported by name and requested by name)
"""Retraining policies over the real control-plane API: YAML or JSON in, ETag out, If-Match
in, 409 on a stale revision, bad input a 4xx naming the field that writes nothing, and the
route table's rules (a viewer reads, only endpoint writers change); on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlharbor.api.app import create_app
from mlharbor.registry.endpoints import EndpointService
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from tests.security.fixtures import (  # noqa: F401  (fixtures)
    admin_headers_for,
    app,
    bearer,
    client,
    identities,
    make_key,
    registry,
    server,
)

URL = "/api/v1/policies/churn"
YAML = {"Content-Type": "application/yaml"}
POLICY = """\
endpoint: churn
triggers:
  drift: {window: 1h, of: 6, at_least: 4}
  cooldown: 6h
rollout:
  canary: {steps: [10, 50, 100], hold: {requests: 50, duration: 1m}}
"""


def _seed(reg: Registry, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "model.bin").write_bytes(b"weights")
    reg.register_version("churn", bundle)
    EndpointService(reg).create({"name": "churn", "routes": [{"ref": "churn:1"}]},
                                actor="setup")


@pytest.fixture
def db_registry(db_settings: Settings, tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.from_settings(db_settings)
    _seed(reg, tmp_path)
    yield reg
    reg.close()


@pytest.fixture
def api(db_settings: Settings, db_registry: Registry, live_server: Any,
        ) -> Iterator[httpx.Client]:
    headers = admin_headers_for(db_settings)
    with live_server(create_app(db_settings, registry=db_registry)) as live, httpx.Client(
            base_url=live.url, headers=headers, timeout=30) as http:
        yield http


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    return response.json()["error"]  # type: ignore[no-any-return]


def _outcomes(reg: Registry) -> list[tuple[str, str]]:
    return [(e.action, e.outcome) for e in reg.store.iter_audit()
            if e.resource == "policy/churn"]


def test_put_get_history_and_if_match(api: httpx.Client, db_registry: Registry) -> None:
    made = api.put(URL, content=POLICY, headers=YAML, params={"reason": "first"})
    assert made.status_code == 201, made.text
    assert made.headers["ETag"] == '"1"' and made.json()["outcome"] == "created"
    got = api.get(URL)
    assert got.headers["ETag"] == '"1"'
    assert got.json()["spec"]["rollout"]["canary"]["steps"] == [10, 50, 100]
    # JSON works too; the body may leave the endpoint out (the path names it).
    spec = {**got.json()["spec"], "enabled": False}
    del spec["endpoint"]
    changed = api.put(URL, json=spec, headers={"If-Match": got.headers["ETag"]})
    assert changed.status_code == 200 and changed.headers["ETag"] == '"2"', changed.text
    assert changed.json()["outcome"] == "updated"
    same = api.put(URL, json=spec)
    assert (same.status_code, same.json()["outcome"]) == (200, "unchanged")
    stale = _error(api.put(URL, content=POLICY, headers={**YAML, "If-Match": '"1"'}), 409)
    assert stale["details"]["current_revision"] == 2
    assert api.get(URL).json()["spec"]["enabled"] is False  # the stale write changed nothing
    old = api.get(URL, params={"revision": 1})
    assert old.status_code == 200 and old.json()["spec"]["enabled"] is True
    history = api.get(f"{URL}/history").json()["items"]
    assert [(h["revision"], h["reason"]) for h in history] == [(1, "first"), (2, "")]
    listed = api.get("/api/v1/policies").json()
    assert listed["total"] == 1 and listed["items"][0]["endpoint"] == "churn"
    _error(api.delete(URL, headers={"If-Match": '"1"'}), 409)
    assert api.delete(URL, headers={"If-Match": '"2"'}).status_code == 204
    _error(api.get(URL), 404)
    assert _outcomes(db_registry) == [
        ("policy.apply", "success"), ("policy.apply", "success"), ("policy.apply", "success"),
        ("policy.apply", "failure"), ("policy.delete", "failure"),
        ("policy.delete", "success")]


@pytest.mark.parametrize(("body", "headers", "status", "field", "message"), [
    ("endpoint: churn\nrollout:\n  canary:\n    steps: [50, 10, 100]\n", YAML, 400,
     None, "policy line 4, rollout.canary.steps: steps must be strictly increasing"),
    ('{"triggers": {"drift": {"of": 2, "at_least": 3}}}', {"Content-Type": "application/json"},
     400, None, "policy, triggers.drift: at_least (3) must be at most `of` (2)"),
    ("endpoint: other\n", YAML, 400, "endpoint", "names endpoint 'other'"),
    ("endpoint: churn\n  x: [\n", YAML, 400, None, "policy line 2: not valid YAML"),
    ("{", {"Content-Type": "application/json"}, 400, "body", "not valid JSON"),
    ("- a\n", YAML, 400, None, "a policy must be a mapping"),
    ("endpoint: churn\n", {"Content-Type": "text/csv"}, 415, "Content-Type", "YAML or JSON"),
    (POLICY, {**YAML, "If-Match": 'W/"1"'}, 400, "If-Match", "is not an endpoint revision"),
    ("endpoint: churn\nmodel: ghost\n", YAML, 404, "model", "Model 'ghost' is not registered"),
])
def test_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(
    api: httpx.Client, db_registry: Registry, body: str, headers: dict[str, str],
    status: int, field: str | None, message: str,
) -> None:
    error = _error(api.put(URL, content=body, headers=headers), status)
    assert message in error["message"], error
    if field is not None:
        assert error["details"]["field"] == field
    assert api.get("/api/v1/policies").json()["total"] == 0
    _error(api.get(f"{URL}/history"), 404)


def test_an_unknown_endpoint_or_revision_is_404(api: httpx.Client) -> None:
    assert "does not exist" in _error(
        api.put("/api/v1/policies/fraud", content="{}", headers=YAML), 404)["message"]
    api.put(URL, content=POLICY, headers=YAML)
    assert "no revision 5" in _error(api.get(URL, params={"revision": 5}), 404)["message"]
    _error(api.get(URL, params={"revision": 0}), 422)
    assert "not allowed" in _error(api.get("/api/v1/policies/a%20b"), 400)["message"]


def test_a_viewer_reads_but_only_an_endpoint_writer_changes(
    settings: Settings, registry: Any, client: httpx.Client, make_key: Any,
    tmp_path: Path,
) -> None:
    _seed(registry, tmp_path)
    viewer, deployer = bearer(make_key("viewer")), bearer(make_key("deployer"))
    other = bearer(make_key("deployer@endpoint:fraud"))
    assert _error(client.put(URL, content=POLICY, headers={**YAML, **viewer}),
                  403)["code"] == "permission_denied"
    _error(client.put(URL, content=POLICY, headers={**YAML, **other}), 403)
    assert client.get("/api/v1/policies", headers=viewer).json()["total"] == 0
    assert client.put(URL, content=POLICY, headers={**YAML, **deployer}).status_code == 201
    assert client.get(URL, headers=viewer).status_code == 200
    assert client.get(f"{URL}/history", headers=viewer).status_code == 200
    _error(client.delete(URL, headers=viewer), 403)
    _error(client.get(URL), 401)
    assert client.delete(URL, headers=deployer).status_code == 204
