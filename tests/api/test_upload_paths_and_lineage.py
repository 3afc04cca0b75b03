"""Uploads over the real control-plane API: file paths like ``.`` are a 400 (never a 500), and
the lineage records the environment that built the model, never the server's own."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mlharbor.api.app import create_app
from mlharbor.registry.lineage import package_versions
from mlharbor.settings import Settings
from tests.security.fixtures import admin_headers_for

CLIENT_ENV = {"python": "3.9.99-client", "platform": "Client-OS-1.0", "code_version": "abc123",
              "packages": {"scikit-learn": "0.0.1-client", "numpy": "0.0.2-client"}}


@pytest.fixture
def api(settings: Settings, live_server: Any) -> Iterator[httpx.Client]:
    headers = admin_headers_for(settings)
    with live_server(create_app(settings)) as server, httpx.Client(
        base_url=server.url, headers=headers, timeout=30
    ) as client:
        yield client


def _upload(api: httpx.Client, files: dict[str, bytes], **form: str) -> httpx.Response:
    parts = [("files", (path, io.BytesIO(data), "application/octet-stream"))
             for path, data in files.items()]
    return api.post("/api/v1/models/churn/versions", files=parts, data=form)


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    return response.json()["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", [".", "..", "a/./b", "./model.bin", "a/", "/abs", "a\\..\\b",
                                  "C:model"])
def test_an_upload_file_path_that_names_no_file_is_a_400(api: httpx.Client, name: str) -> None:
    error = _error(_upload(api, {name: b"weights"}), 400)
    assert error["code"] == "invalid_input" and error["details"]["field"] == "files"
    assert "is not allowed" in error["message"]
    assert api.get("/livez").status_code == 200


@pytest.mark.parametrize("path", ["%2E", "%2E%2E", "a/%2E/b", "%2E/model.bin", "model.bin%00",
                                  "%5C..%5Cx"])
def test_a_download_path_that_names_no_file_is_a_400(api: httpx.Client, path: str) -> None:
    assert _upload(api, {"model.bin": b"weights"}).status_code == 201
    error = _error(api.get(f"/api/v1/models/churn/versions/1/files/{path}"), 400)
    assert error["details"]["field"] == "path"
    assert api.get("/api/v1/models/churn/versions/1/files/model.bin").content == b"weights"


def _lineage(api: httpx.Client, version: int) -> dict[str, Any]:
    got = api.get(f"/api/v1/models/churn/versions/{version}/lineage")
    assert got.status_code == 200, got.text
    return got.json()["lineage"]  # type: ignore[no-any-return]


def test_lineage_records_the_environment_the_client_declared(api: httpx.Client) -> None:
    made = _upload(api, {"model.bin": b"w"}, environment=json.dumps(CLIENT_ENV))
    assert made.status_code == 201, made.text
    lineage = _lineage(api, 1)
    assert {k: lineage[k] for k in CLIENT_ENV} == CLIENT_ENV
    assert lineage["environment_source"] == "declared by the client"
    assert lineage["python"] != sys.version.split()[0]
    assert lineage["packages"]["numpy"] != package_versions()["numpy"]
    assert "mlharbor" not in lineage["packages"]  # nothing of the server's mixed in


def test_lineage_without_a_declared_environment_is_unknown_or_the_manifests(
    api: httpx.Client,
) -> None:
    assert _upload(api, {"model.bin": b"w"}).status_code == 201
    lineage = _lineage(api, 1)
    assert lineage["environment_source"] == "not provided"
    assert (lineage["python"], lineage["platform"], lineage["code_version"],
            lineage["packages"]) == (None, None, None, {})

    manifest = {"framework_versions": {"python": "3.8.1", "scikit-learn": "1.0-client"}}
    made = _upload(api, {"model.skops": b"w", "manifest.json": json.dumps(manifest).encode()})
    assert made.status_code == 201, made.text
    lineage = _lineage(api, 2)
    assert lineage["environment_source"] == "bundle manifest"
    assert lineage["python"] == "3.8.1" and lineage["packages"] == {"scikit-learn": "1.0-client"}


@pytest.mark.parametrize(("environment", "field"), [
    ("[1]", "environment"), ("{", "environment"), ('{"gpu": "x"}', "environment.gpu"),
    ('{"python": 3}', "environment.python"), ('{"packages": {"numpy": 1}}',
                                               "environment.packages"),
])
def test_a_bad_declared_environment_is_a_400(api: httpx.Client, environment: str,
                                             field: str) -> None:
    error = _error(_upload(api, {"model.bin": b"w"}, environment=environment), 400)
    assert error["details"]["field"] == field
