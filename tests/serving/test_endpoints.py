"""Endpoints as stored desired state: service rules, audit + ledger, CLI and control-plane API."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from mlharbor.core.errors import ConflictError, InvalidInputError, NotFoundError
from mlharbor.registry.endpoints import EndpointService
from tests.support import cli_env, run_cli

CANARY = {"name": "scoring", "routes": [{"ref": "churn@champion", "weight": 90},
                                        {"ref": "churn:2", "weight": 10}],
          "fallback": ["previous", "churn:2"], "default_answer": {"prediction": 0},
          "batching": {"max_batch_size": 16}, "limits": {"timeout_ms": 500}}


def test_create_update_delete_are_audited_and_kept_in_the_ledger(registry: Any) -> None:
    service = EndpointService(registry)
    created = service.create(CANARY, actor="alice", reason="launch")
    assert created.revision == 1 and created.spec.routes[1].ref == "churn:2"
    with pytest.raises(ConflictError):
        service.create(CANARY, actor="alice")
    updated = service.update("scoring", {"routes": [{"ref": "churn:2"}]}, actor="bob",
                             reason="promote")
    assert updated.revision == 2 and updated.spec.fallback == ["previous", "churn:2"]
    assert [e.name for e in service.list_endpoints()] == ["scoring"]
    service.delete("scoring", actor="carol")
    with pytest.raises(NotFoundError):
        service.get("scoring")
    history = service.history("scoring")
    assert [(c.action, c.actor, c.revision) for c in history] == [
        ("create", "alice", 1), ("update", "bob", 2), ("delete", "carol", 3)]
    assert history[1].reason == "promote"
    actions = [(e.action, e.actor, e.outcome) for e in registry.store.iter_audit()
               if e.resource == "endpoint/scoring"]
    assert actions == [("endpoint.create", "alice", "success"),
                       ("endpoint.create", "alice", "failure"),
                       ("endpoint.update", "bob", "success"),
                       ("endpoint.delete", "carol", "success")]


@pytest.mark.parametrize(("body", "field"), [
    ({**CANARY, "routes": []}, "routes"),
    ({**CANARY, "routes": [{"ref": "churn@", "weight": 1}]}, "routes.0.ref"),
    ({**CANARY, "routes": [{"ref": "churn", "weight": -1}]}, "routes.0.weight"),
    ({**CANARY, "name": "../etc"}, "name"),
    ({**CANARY, "surprise": 1}, "surprise"),
    ({**CANARY, "limits": {"timeout_ms": 0}}, "limits.timeout_ms"),
])
def test_bad_specs_name_the_field(registry: Any, body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        EndpointService(registry).create(body, actor="alice")
    assert caught.value.details["field"] == field


def test_references_must_resolve(registry: Any) -> None:
    with pytest.raises(NotFoundError, match="no alias"):
        EndpointService(registry).create({"name": "x", "routes": [{"ref": "churn@nope"}]},
                                         actor="alice")
    with pytest.raises(NotFoundError):
        EndpointService(registry).create({"name": "x", "routes": [{"ref": "ghost"}]},
                                         actor="alice")


def test_cli(home_settings: Any) -> None:
    env = cli_env(home_settings)
    made = run_cli("endpoints", "create", "scoring", "--route", "churn@champion=90",
                   "--route", "churn:2=10", "--fallback", "previous", "--default-answer", "0",
                   "--max-batch-size", "8", "--timeout-ms", "300", "--json", env=env)
    assert made.returncode == 0, made.stderr
    shown = run_cli("endpoints", "show", "scoring", env=env)
    assert "churn@champion (90)" in shown.stdout
    assert run_cli("endpoints", "update", "scoring", "--route", "churn:2",
                   env=env).returncode == 0
    listed = run_cli("endpoints", "list", "--json", env=env)
    assert '"revision": 2' in listed.stdout
    bad = run_cli("endpoints", "create", "other", "--route", "churn@ghost", env=env)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "ghost" in bad.stderr
    assert run_cli("endpoints", "delete", "scoring", "--yes", env=env).returncode == 0
    history = run_cli("endpoints", "history", "scoring", "--json", env=env)
    assert history.stdout.count('"action"') == 3


def test_control_plane_api(home_settings: Any, registry: Any, live_server: Any) -> None:
    from mlharbor.api.app import create_app
    from mlharbor.bootstrap import open_identities

    key = open_identities(registry).init_admin("root", actor="test")[1]
    auth = {"Authorization": f"Bearer {key}"}
    with live_server(create_app(home_settings, registry=registry)) as server, \
            httpx.Client(base_url=server.url, headers=auth) as client:
        assert httpx.post(f"{server.url}/api/v1/endpoints", json=CANARY).status_code == 401
        made = client.post("/api/v1/endpoints", json=CANARY, params={"reason": "launch"})
        assert made.status_code == 201, made.text
        assert client.post("/api/v1/endpoints", json=CANARY).status_code == 409
        patched = client.patch("/api/v1/endpoints/scoring",
                               json={"shadow": "churn:2", "reason": "compare"})
        assert patched.status_code == 200 and patched.json()["spec"]["shadow"] == "churn:2"
        bad = client.patch("/api/v1/endpoints/scoring", json={"routes": [{"ref": "x@"}]})
        assert bad.status_code == 400
        assert bad.json()["error"]["details"]["field"] == "routes.0.ref"
        replaced = client.put("/api/v1/endpoints/scoring",
                              json={"name": "scoring", "routes": [{"ref": "churn:1"}]})
        assert replaced.json()["revision"] == 3 and replaced.json()["spec"]["shadow"] is None
        assert client.get("/api/v1/endpoints").json()["total"] == 1
        assert client.delete("/api/v1/endpoints/scoring").status_code == 204
        history = client.get("/api/v1/endpoints/scoring/history").json()["items"]
        assert [h["action"] for h in history] == ["create", "update", "update", "delete"]
        assert history[0]["actor"] == "root"
        assert client.get("/api/v1/endpoints/scoring").status_code == 404
