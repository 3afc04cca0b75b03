"""The demo model's card in Chromium: from the dashboard's version page, the "Model card" link
opens the card page (signed in with the session cookie), which shows the recipe's intended use,
the training data fingerprint, the slices and the importance charts and who promoted it; the
card's API route answers JSON, Markdown and HTML and refuses a caller without credentials.
The screenshot is kept in docs/screenshots/model-card.png when MLHARBOR_SCREENSHOTS is set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import LiveServer
from tests.trained_demo import GROUP, trained_demo_home
from tests.ui.test_dashboard import CHROMIUM

pytestmark = pytest.mark.xdist_group(GROUP)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The demo recipe trained (a copy of the session's trained demo home:
    tests/trained_demo.py), v1 promoted to production by a release manager; the control plane
    on a loopback port. Yields (url, admin key)."""
    from mlharbor.api.app import create_app
    from mlharbor.bootstrap import open_identities, open_registry

    settings = trained_demo_home(tmp_path_factory, "card-ui")
    registry = open_registry(settings)
    identities = open_identities(registry)
    identities.create_identity("admin-1", kind="user", grants=["admin"], actor="test")
    key = identities.create_key("admin-1", actor="test")[1]
    registry.set_alias("churn", "production", 1, actor="release-manager",
                       reason="approved in the Tuesday review")
    try:
        with LiveServer(create_app(settings, registry=registry)) as server:
            yield server.url, key
    finally:
        registry.close()


def test_card_route_formats_and_auth(demo_server: tuple[str, str]) -> None:
    url, key = demo_server
    auth = {"Authorization": f"Bearer {key}"}
    base = f"{url}/api/v1/models/churn/versions/1/card"
    body = httpx.get(base, headers=auth).json()
    assert body["ref"] == "churn:1" and body["details"]["intended_use"].startswith("Rank")
    markdown = httpx.get(base, params={"format": "md", "set": "owners=Team Churn"},
                         headers=auth)
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert "Team Churn" in markdown.text and "## History (audit trail)" in markdown.text
    page = httpx.get(base, params={"format": "html"}, headers=auth)
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "<svg" in page.text and "<script" not in page.text
    assert httpx.get(base).status_code == 401
    bad = httpx.get(base, params={"set": "colour=blue"}, headers=auth)
    assert bad.status_code == 400 and "KEY one of" in bad.text
    assert httpx.get(f"{url}/api/v1/models/churn/versions/9/card", headers=auth
                     ).status_code == 404
    odd = httpx.get(f"{url}/api/v1/models/churn%40champion/versions/1/card", headers=auth)
    assert odd.status_code == 400 and "model name 'churn@champion'" in odd.text, odd.text
    assert httpx.get(f"{url}/ui/models/churn/versions/1/card").status_code in (401, 303, 307)


def test_the_demo_model_card_in_chromium(demo_server: tuple[str, str], tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    url, key = demo_server
    folder = Path(os.environ.get("MLHARBOR_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{url}/ui/login")
            page.fill("#key", key)
            page.click("#login button[type=submit]")
            page.wait_for_url(f"{url}/ui")
            page.goto(f"{url}/ui#/models/churn/1")
            page.wait_for_selector("#model-card-link")
            page.click("#model-card-link")
            page.wait_for_url(f"{url}/ui/models/churn/versions/1/card")
            assert page.inner_text("#card-title") == "Model card: churn:1"
            assert "Rank the bundled demo telecom customers" in page.inner_text(
                "#card-intended_use")
            assert "sha256:" in page.inner_text("#card-data")
            history = page.inner_text("#card-history")
            assert "release-manager" in history and "approved in the Tuesday review" in history
            assert page.locator("h2", has_text="Slices").count() == 1
            assert page.locator("svg").count() >= 3  # importance + partial dependence plots
            page.screenshot(path=str(folder / "model-card.png"))
            page.locator("h2", has_text="Slices").scroll_into_view_if_needed()
            page.screenshot(path=str(folder / "model-card-slices.png"))
            page.click("text=back to the dashboard")
            page.wait_for_selector("#report-metrics")
            assert not errors, errors
        finally:
            browser.close()
