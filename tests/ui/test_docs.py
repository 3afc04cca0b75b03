"""``/docs`` works without internet: Swagger UI comes from the package, and a browser logged in
to the dashboard reads it with its session cookie."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from mlharbor.settings import Settings
from tests.support import LiveServer
from tests.ui.test_dashboard import watched_context


@pytest.fixture
def control_plane(settings: Settings) -> Iterator[tuple[str, str]]:
    from mlharbor.api.app import create_app
    from mlharbor.bootstrap import open_identities, open_registry

    registry = open_registry(settings)
    identities = open_identities(registry)
    identities.create_identity("viewer-1", kind="user", grants=["viewer"], actor="test")
    key = identities.create_key("viewer-1", actor="test")[1]
    try:
        with LiveServer(create_app(settings, registry=registry)) as server:
            yield server.url, key
    finally:
        registry.close()


def test_the_docs_page_loads_only_from_the_server(control_plane: tuple[str, str]) -> None:
    url, key = control_plane
    assert httpx.get(f"{url}/docs").status_code == 401
    page = httpx.get(f"{url}/docs", headers={"Authorization": f"Bearer {key}"})
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text and "//" not in page.text.replace("<!doctype", "")
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "docs.js"):
        asset = httpx.get(f"{url}/ui/static/{name}", headers={"Authorization": f"Bearer {key}"})
        assert asset.status_code == 200 and len(asset.content) > 100, name


def test_a_logged_in_browser_reads_the_docs(control_plane: tuple[str, str]) -> None:
    """Log in through the dashboard's form, then open /docs: Swagger UI renders every
    operation of the spec from the package, with no request to another origin (the watched
    context fails the test on any) and no console error."""
    url, key = control_plane
    spec = httpx.get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {key}"}).json()
    operations = sum(len(item) for item in spec["paths"].values())
    with watched_context(url) as (_context, page):
        page.goto(f"{url}/ui")
        page.fill("#key", key)
        page.click("#login button[type=submit]")
        page.wait_for_url(f"{url}/ui")
        page.goto(f"{url}/docs")
        page.wait_for_selector(".opblock")
        assert page.locator(".opblock").count() == operations
        assert "mlharbor" in page.inner_text(".info .title")
