"""The dashboard in a real browser (Debian chromium driven by Playwright), behind real auth."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from mlharbor.api.errors import install_error_handlers
from mlharbor.api.routes import models as model_routes
from mlharbor.api.routes import monitoring as monitoring_routes
from mlharbor.bootstrap import open_identities, open_registry
from mlharbor.core.records import PredictionRecord
from mlharbor.data.profile import build_profile
from mlharbor.monitoring.alerts import AlertManager, load_rules
from mlharbor.monitoring.reference import infer_kinds
from mlharbor.monitoring.service import Monitor
from mlharbor.security.middleware import add_auth
from mlharbor.settings import Settings
from mlharbor.ui import login as ui_login
from mlharbor.ui import routes as ui_routes
from mlharbor.ui import whoami as ui_whoami
from tests.monitoring.drift_data import make_frame
from tests.support import LiveServer

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
                 if Path(p).exists()), None)


@pytest.fixture
def dashboard(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, str]]:
    registry = open_registry(settings)
    identities = open_identities(registry)
    identities.create_identity("viewer-1", kind="user", grants=["viewer"], actor="test")
    _info, key = identities.create_key("viewer-1", actor="test")
    rng = np.random.default_rng(2)
    reference = make_frame(rng, 20_000)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.txt").write_text("a model")
    registry.create_model("churn")
    registry.register_version("churn", bundle, lineage={"reference_profile": build_profile(
        reference, infer_kinds(reference), importances={"x2": 0.5})})
    monitor = Monitor(settings, registry)
    now = datetime.now(UTC)
    for i, row in enumerate(make_frame(rng, 2_000, "mean").to_dict(orient="records")):
        monitor.log.emit(PredictionRecord(f"r{i}", "churn", "churn@champion", 1, row,
                                          [int(row["x2"] > 0)], 0.01,
                                          now - timedelta(hours=3, seconds=-5 * i)))
    monitor.log.flush()
    monitor.log.compact()
    alerts = AlertManager(load_rules([{"name": "churn-drift", "kind": "drift",
                                       "endpoint": "churn", "threshold": 0.3, "m": 1,
                                       "n": 1}]))
    alerts.evaluate({"churn-drift": 1.0})
    app = FastAPI()
    app.state.settings, app.state.registry = settings, registry
    app.state.monitor, app.state.alerts = monitor, alerts
    install_error_handlers(app, debug=False)
    app.include_router(monitoring_routes.router)
    app.include_router(ui_routes.router)
    app.include_router(ui_login.router)
    app.include_router(model_routes.router)  # the page the dashboard opens on
    app.include_router(ui_whoami.router)
    add_auth(app, identities=identities, audit=registry.store.record, settings=settings)
    try:
        with LiveServer(app) as server:
            yield server.url, key
    finally:
        registry.close()


def test_the_dashboard_needs_credentials(dashboard: tuple[str, str]) -> None:
    url, key = dashboard
    assert httpx.get(f"{url}/ui").status_code == 401
    assert httpx.get(f"{url}/ui/static/dashboard.js").status_code == 401
    page = httpx.get(f"{url}/ui", headers={"Authorization": f"Bearer {key}"})
    assert page.status_code == 200 and "script-src 'self'" in page.headers[
        "content-security-policy"]
    missing = httpx.get(f"{url}/ui/static/../../settings.py",
                        headers={"Authorization": f"Bearer {key}"})
    assert missing.status_code == 404


@contextlib.contextmanager
def watched_context(url: str, headers: dict[str, str] | None = None) -> Iterator[Any]:
    """A Chromium context and page on the dashboard; on exit, asserts that the page logged no
    console or page errors and requested nothing from another origin."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    requested: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            context = browser.new_context(extra_http_headers=headers or {})
            page = context.new_page()
            page.on("request", lambda r: requested.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield context, page
        finally:
            browser.close()
    assert not errors, errors
    assert requested and all(r.startswith(url) for r in requested), requested


def test_the_dashboard_shows_drift_performance_and_alerts(dashboard: tuple[str, str]) -> None:
    url, key = dashboard
    with watched_context(url, {"Authorization": f"Bearer {key}"}) as (_context, page):
        page.goto(f"{url}/ui#/drift")
        page.wait_for_selector("#endpoint option[value=churn]", state="attached")
        page.select_option("#endpoint", "churn")
        page.click("#controls button[type=submit]")
        page.wait_for_selector("#features tbody tr")
        first = page.locator("#features tbody tr").first
        assert first.get_attribute("data-feature") == "x2"
        assert first.locator("td").nth(1).inner_text() == "yes"
        assert "Drift detected" in page.inner_text("#verdict")
        page.wait_for_selector("#drift-chart canvas")  # uPlot drew the series
        assert "endpoint=churn" in page.url
        page.reload()  # the URL keeps the selection
        page.wait_for_selector("#features tbody tr")
        page.click("#nav a[data-page=alerts]")
        page.wait_for_selector("#alerts li")
        assert "FIRING" in page.inner_text("#alerts")


def test_a_browser_logs_in_with_its_key_and_the_cookie_only_reads(
        dashboard: tuple[str, str]) -> None:
    """No Authorization header: /ui -> the login form -> type the key -> the dashboard, its
    files and the API read through the session cookie; a cookie-only mutation is refused."""
    url, key = dashboard
    with watched_context(url) as (context, page):
        page.goto(f"{url}/ui")
        assert page.url == f"{url}/ui/login"
        page.fill("#key", key)
        page.click("#login button[type=submit]")
        page.wait_for_url(f"{url}/ui")
        cookie = next(c for c in context.cookies() if c["name"] == "mlharbor_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
        assert cookie["value"] != key and key not in cookie["value"]  # a session, not the key
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
        page.click("#nav a[data-page=drift]")
        page.wait_for_selector("#endpoint option[value=churn]", state="attached")
        page.select_option("#endpoint", "churn")
        page.click("#controls button[type=submit]")
        page.wait_for_selector("#features tbody tr")
        page.wait_for_selector("#drift-chart canvas")
        page.click("#nav a[data-page=alerts]")
        page.wait_for_selector("#alerts li")
        assert "FIRING" in page.inner_text("#alerts")
        # The same cookie, sent by the browser's context, cannot change anything.
        refused = context.request.post(f"{url}/v1/endpoints/churn/feedback",
                                       data={"request_id": "r1", "label": 1})
        assert refused.status == 401
        assert refused.json()["error"]["code"] == "unauthenticated"
        assert key not in refused.text()
        assert context.request.get(f"{url}/api/v1/monitoring/alerts").status == 200
        page.click("#logout-button")
        page.wait_for_url(f"{url}/ui/login")
        assert not [c for c in context.cookies() if c["name"] == "mlharbor_session"]
        page.goto(f"{url}/ui")
        assert page.url == f"{url}/ui/login"


def test_a_wrong_key_in_the_login_form_is_refused(dashboard: tuple[str, str]) -> None:
    url, key = dashboard
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    origin = {"Origin": url}  # what a browser sends with the form
    answer = httpx.post(f"{url}/ui/login", data={"key": wrong}, headers=origin)
    assert answer.status_code == 401 and 'name="key"' in answer.text
    assert wrong not in answer.text and "set-cookie" not in answer.headers
    # The key itself is no session: only the token a login hands out is.
    assert httpx.get(f"{url}/ui", headers={"Cookie": f"mlharbor_session={key}"}
                     ).status_code == 401
    right = httpx.post(f"{url}/ui/login", data={"key": key}, headers=origin)
    assert right.status_code == 303
    with_cookie = {"Cookie": right.headers["set-cookie"].split(";")[0]}
    assert httpx.get(f"{url}/ui", headers=with_cookie).status_code == 200
    assert httpx.get(f"{url}/ui/static/dashboard.js", headers=with_cookie).status_code == 200


def test_login_returns_to_the_page_it_was_opened_with(dashboard: tuple[str, str]) -> None:
    """/ui#/drift?endpoint=churn without a session -> the login form -> the key -> that same
    drift page, not the default one. (A wrong key first re-renders the form with the page kept,
    checked without a browser: Chromium logs the form's 401 as a console error.)"""
    url, key = dashboard
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    again = httpx.post(f"{url}/ui/login", data={"key": wrong, "next": "#/drift?endpoint=churn"},
                       headers={"Origin": url})
    assert again.status_code == 401 and 'value="#/drift?endpoint=churn"' in again.text
    with watched_context(url) as (_context, page):
        page.goto(f"{url}/ui#/drift?endpoint=churn")
        assert page.url == f"{url}/ui/login#/drift?endpoint=churn"
        page.fill("#key", key)
        page.click("#login button[type=submit]")
        page.wait_for_url(f"{url}/ui#/drift?endpoint=churn")
        page.wait_for_selector("#features tbody tr")  # the drift page, for churn


@pytest.mark.parametrize("next_page", [
    "//evil.example/ui", "https://evil.example/", "#/x\"><script>alert(1)</script>",
    "/../api/v1/audit", "#/" + "a" * 500, "#\\evil.example",
])
def test_login_never_redirects_off_the_dashboard(dashboard: tuple[str, str],
                                                 next_page: str) -> None:
    url, key = dashboard
    answer = httpx.post(f"{url}/ui/login", data={"key": key, "next": next_page},
                        headers={"Origin": url})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"
    kept = httpx.post(f"{url}/ui/login", data={"key": key, "next": "#/endpoints/churn"},
                      headers={"Origin": url})
    assert kept.headers["location"] == "/ui#/endpoints/churn"
