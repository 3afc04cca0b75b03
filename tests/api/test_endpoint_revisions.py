"""Endpoint revisions over the real control-plane API: ETag out, If-Match in, 409 on a stale
write (audited as a failure), and two concurrent HTTP writers never lose a change; on SQLite
and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlharbor.api.app import create_app
from mlharbor.client import Client
from mlharbor.core.errors import ConflictError
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from tests.registry.test_races import _race
from tests.security.fixtures import admin_headers_for

SPEC = {"name": "scoring", "routes": [{"ref": "churn:1"}]}
URL = "/api/v1/endpoints/scoring"


@pytest.fixture
def registry(db_settings: Settings, tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.from_settings(db_settings)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    reg.register_version("churn", bundle)
    yield reg
    reg.close()


@pytest.fixture
def server(db_settings: Settings, registry: Registry, live_server: Any) -> Iterator[Any]:
    with live_server(create_app(db_settings, registry=registry)) as live:
        yield live


@pytest.fixture
def headers(db_settings: Settings, registry: Registry) -> dict[str, str]:
    return admin_headers_for(db_settings)


@pytest.fixture
def api(server: Any, headers: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        made = client.post("/api/v1/endpoints", json=SPEC)
        assert made.status_code == 201, made.text
        yield client


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    return response.json()["error"]  # type: ignore[no-any-return]


def _outcomes(registry: Registry, action: str) -> list[str]:
    return [e.outcome for e in registry.store.iter_audit()
            if e.action == action and e.resource == "endpoint/scoring"]


def test_etag_and_if_match(api: httpx.Client, registry: Registry) -> None:
    got = api.get(URL)
    assert got.headers["etag"] == '"1"' and got.json()["revision"] == 1
    changed = api.patch(URL, json={"description": "v2"}, headers={"If-Match": '"1"'})
    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] == '"2"' and changed.json()["revision"] == 2

    stale = _error(api.patch(URL, json={"description": "lost?"}, headers={"If-Match": '"1"'}),
                   409)
    assert stale["code"] == "conflict"
    assert stale["details"] == {"expected_revision": 1, "current_revision": 2}
    assert "revision 2" in stale["message"]
    _error(api.put(URL, json={**SPEC, "description": "x"}, headers={"If-Match": '"1"'}), 409)
    _error(api.delete(URL, headers={"If-Match": '"1"'}), 409)
    # The revision in a PATCH body works like If-Match (Kubernetes' resourceVersion style).
    _error(api.patch(URL, json={"description": "x", "revision": 1}), 409)
    assert api.get(URL).json()["spec"]["description"] == "v2"
    assert _outcomes(registry, "endpoint.update") == ["success", "failure", "failure",
                                                      "failure"]
    assert _outcomes(registry, "endpoint.delete") == ["failure"]

    assert api.patch(URL, json={"description": "v3", "revision": 2}).json()["revision"] == 3
    assert api.patch(URL, json={"description": "v4"}, headers={"If-Match": "*"}).status_code \
        == 200
    assert api.put(URL, json=SPEC, headers={"If-Match": "4"}).headers["etag"] == '"5"'
    assert api.delete(URL, headers={"If-Match": '"5"'}).status_code == 204


@pytest.mark.parametrize("value", ['W/"1"', "abc", '"0"', '"1", "2"', '"-1"', '"1'])
def test_an_if_match_that_is_no_revision_is_a_400(api: httpx.Client, value: str) -> None:
    error = _error(api.patch(URL, json={"description": "x"}, headers={"If-Match": value}), 400)
    assert error["details"]["field"] == "If-Match"
    assert api.get(URL).json()["revision"] == 1


def test_if_match_and_body_revision_must_agree(api: httpx.Client) -> None:
    error = _error(api.patch(URL, json={"description": "x", "revision": 2},
                             headers={"If-Match": '"1"'}), 400)
    assert error["details"]["field"] == "revision"


def test_two_http_writers_one_gets_409_and_nothing_is_lost(
    server: Any, headers: dict[str, str], api: httpx.Client, registry: Registry,
) -> None:
    changes: list[dict[str, Any]] = [{"description": "from alice"},
                                     {"limits": {"timeout_ms": 250}}]
    read = threading.Barrier(2)

    def writer(i: int) -> int:
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            tag = client.get(URL).headers["etag"]
            read.wait()  # both hold the same revision before either writes
            first = client.patch(URL, json=changes[i], headers={"If-Match": tag})
            if first.status_code == 409:
                assert first.json()["error"]["details"]["current_revision"] == 2
                tag = client.get(URL).headers["etag"]
                retry = client.patch(URL, json=changes[i], headers={"If-Match": tag})
                assert retry.status_code == 200, retry.text
            return first.status_code

    assert sorted(_race(2, writer)) == [200, 409]
    final = api.get(URL).json()
    assert final["revision"] == 3
    assert final["spec"]["description"] == "from alice"
    assert final["spec"]["limits"]["timeout_ms"] == 250
    assert sorted(_outcomes(registry, "endpoint.update")) == ["failure", "success", "success"]


def test_the_python_client_passes_the_revision(server: Any, headers: dict[str, str],
                                               api: httpx.Client) -> None:
    key = headers["Authorization"].removeprefix("Bearer ")
    with Client(server.url, key) as client:
        seen = client.get_endpoint("scoring")
        assert seen["revision"] == 1
        done = client.update_endpoint("scoring", {"description": "mine"},
                                      revision=seen["revision"], reason="test")
        assert done["revision"] == 2
        with pytest.raises(ConflictError) as caught:
            client.update_endpoint("scoring", {"description": "stale"}, revision=1)
        assert caught.value.details["current_revision"] == 2
    assert api.get(URL).json()["spec"]["description"] == "mine"
