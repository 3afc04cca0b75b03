"""Anonymous grants: for servers behind a platform that authenticates callers itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from mlharbor.api.app import create_app
from mlharbor.core.errors import ConfigError
from mlharbor.settings import Settings


def test_no_anonymous_access_by_default(settings: Settings, live_server: Any) -> None:
    with live_server(create_app(settings)) as server:
        assert httpx.get(f"{server.url}/api/v1/models").status_code == 401


def test_anonymous_viewer_reads_but_cannot_change(tmp_path: Path, live_server: Any) -> None:
    settings = Settings(home=tmp_path / "home", security={"anonymous_grants": ["viewer"]})
    with live_server(create_app(settings)) as server:
        assert httpx.get(f"{server.url}/api/v1/models").status_code == 200
        refused = httpx.post(f"{server.url}/api/v1/models", json={"name": "churn"})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize("grant", ["admin", "editor", "deployer@model:churn"])
def test_powerful_anonymous_grants_are_refused(tmp_path: Path, grant: str) -> None:
    settings = Settings(home=tmp_path / "home", security={"anonymous_grants": [grant]})
    with pytest.raises(ConfigError, match="only viewer and predictor"):
        create_app(settings)


@pytest.mark.parametrize("headers", [
    {"Authorization": "Basic eDp5"},
    {"Authorization": "Token mlh_abc"},
    {"Authorization": "Bearer"},
    {"X-API-Key": ""},
    {"Cookie": 'mlharbor_session="mlh_bad\\'},
])
def test_a_malformed_credential_never_falls_back_to_anonymous(
        tmp_path: Path, live_server: Any, headers: dict[str, str]) -> None:
    settings = Settings(home=tmp_path / "home", security={"anonymous_grants": ["viewer"]})
    with live_server(create_app(settings)) as server:
        assert httpx.get(f"{server.url}/api/v1/models").status_code == 200  # no credential
        assert httpx.get(f"{server.url}/api/v1/models", headers=headers).status_code == 401
