"""The control-plane registry API over a real server on a loopback port."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mlharbor.api.app import create_app
from mlharbor.settings import Settings


@pytest.fixture
def api(settings: Settings, live_server: Any, api_headers: dict[str, str]
        ) -> Iterator[httpx.Client]:
    with live_server(create_app(settings)) as server, httpx.Client(
        base_url=server.url, headers=api_headers, timeout=30
    ) as client:
        yield client


@pytest.fixture
def api_headers(settings: Settings) -> dict[str, str]:
    """Credentials for the API: a fresh admin key in this test's database."""
    from tests.security.fixtures import admin_headers_for

    return admin_headers_for(settings)


def _upload(api: httpx.Client, name: str, **form: str) -> httpx.Response:
    files = [("files", ("model.bin", io.BytesIO(b"weights"), "application/octet-stream")),
             ("files", ("meta/info.json", io.BytesIO(b"{}"), "application/json"))]
    return api.post(f"/api/v1/models/{name}/versions", files=files, data=form)


def _assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert "Traceback" not in response.text
    if code:
        assert error["code"] == code
    return error  # type: ignore[no-any-return]


def test_health(api: httpx.Client) -> None:
    assert api.get("/livez").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}
    assert api.get("/openapi.json").status_code == 200


def test_register_alias_and_resolve(api: httpx.Client) -> None:
    created = api.post("/api/v1/models", json={"name": "churn", "description": "d",
                                               "tags": {"team": "risk"}})
    assert created.status_code == 201, created.text
    up = _upload(api, "churn", metrics='{"f1": 0.8}', tags='{"run": "1"}')
    assert up.status_code == 201, up.text
    assert up.json()["version"] == 1 and up.json()["status"] == "ready"
    assert {f["path"] for f in up.json()["files"]} == {"model.bin", "meta/info.json"}
    assert _upload(api, "churn").json()["version"] == 2
    moved = api.put("/api/v1/models/churn/aliases/champion", json={"version": 1,
                                                                   "reason": "first"})
    assert moved.status_code == 200 and moved.json()["to_version"] == 1
    assert api.get("/api/v1/resolve/churn@champion").json()["version"] == 1
    assert api.get("/api/v1/resolve/churn").json()["version"] == 2
    assert api.get("/api/v1/models/churn/aliases/champion").json()["version"] == 1
    listing = api.get("/api/v1/models", params={"tag": "team=risk"}).json()
    assert [m["name"] for m in listing["items"]] == ["churn"]
    versions = api.get("/api/v1/models/churn/versions", params={"page_size": 1}).json()
    assert [v["version"] for v in versions["items"]] == [2] and versions["next_page_token"]
    file_body = api.get("/api/v1/models/churn/versions/1/files/model.bin")
    assert file_body.content == b"weights"
    history = api.get("/api/v1/models/churn/alias-history").json()["items"]
    assert history[0]["alias"] == "champion" and history[0]["reason"] == "first"
    _assert_error(api.delete("/api/v1/models/churn/versions/1"), 409, "conflict")
    assert api.post("/api/v1/models/churn/versions/2/archive").json()["archived"] is True
    assert api.delete("/api/v1/models/churn/versions/2").status_code == 204


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("get", "/api/v1/models/nope", {}, 404),
        ("get", "/api/v1/models/..%2fx", {}, 404),
        ("get", "/api/v1/models/%2e%2e%2f", {}, 404),
        ("get", "/api/v1/resolve/churn:abc", {}, 400),
        ("get", "/api/v1/resolve/churn@latest", {}, 400),
        ("post", "/api/v1/models", {"json": {"name": "../x"}}, 400),
        ("post", "/api/v1/models", {"json": {"name": " churn"}}, 400),
        ("post", "/api/v1/models", {"json": {"name": "x" * 300}}, 422),
        ("post", "/api/v1/models", {"json": {}}, 422),
        ("post", "/api/v1/models", {"content": b"not json",
                                    "headers": {"content-type": "application/json"}}, 422),
        ("post", "/api/v1/models", {"json": {"name": "ok", "tags": {"k": 1}}}, 422),
        ("get", "/api/v1/models", {"params": {"page_token": "!!"}}, 400),
        ("get", "/api/v1/models", {"params": {"page_size": 0}}, 422),
        ("get", "/api/v1/models", {"params": {"tag": "novalue"}}, 400),
        ("put", "/api/v1/models/churn/aliases/champion", {"json": {"version": "x"}}, 422),
        ("put", "/api/v1/models/churn/aliases/latest", {"json": {"version": 1}}, 400),
        ("get", "/api/v1/models/churn/versions/abc", {}, 422),
        ("get", "/api/v1/models/churn/versions/99999999999999999999", {}, 422),
        ("get", "/api/v1/resolve/churn:99999999999999999999", {}, 400),
        ("get", "/no/such/route", {}, 404),
        ("patch", "/livez", {}, 405),
    ],
)
def test_bad_input_gets_a_json_4xx(api: httpx.Client, method: str, path: str,
                                   kwargs: dict[str, Any], status: int) -> None:
    _assert_error(getattr(api, method)(path, **kwargs), status)


def test_upload_refuses_escaping_paths_and_bad_json(api: httpx.Client) -> None:
    for bad in ["../evil", "/etc/passwd", "a/../../b", "C:/x", "a//b"]:
        files = [("files", (bad, io.BytesIO(b"x"), "application/octet-stream"))]
        error = _assert_error(api.post("/api/v1/models/churn/versions", files=files), 400)
        assert "not allowed" in error["message"]
    files = [("files", ("m.bin", io.BytesIO(b"x"), "application/octet-stream"))]
    error = _assert_error(
        api.post("/api/v1/models/churn/versions", files=files, data={"metrics": "[1]"}), 400)
    assert "metrics must be a JSON object" in error["message"]
    error = _assert_error(
        api.post("/api/v1/models/churn/versions", files=files, data={"metrics": '{"f1": NaN}'}),
        400)
    assert "finite" in error["message"]
    clash = [("files", ("a", io.BytesIO(b"x"), "application/octet-stream")),
             ("files", ("a/b", io.BytesIO(b"y"), "application/octet-stream"))]
    _assert_error(api.post("/api/v1/models/churn/versions", files=clash), 400)
    long_name = [("files", ("x" * 300, io.BytesIO(b"x"), "application/octet-stream"))]
    _assert_error(api.post("/api/v1/models/churn/versions", files=long_name), 400)
    _assert_error(api.patch("/api/v1/models/churn/versions/1",
                            json={"tags": {"signature.ed25519": "forged"}}), 400)
    assert _assert_error(api.get("/api/v1/models/churn"), 404)
