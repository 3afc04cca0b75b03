"""Every dashboard page in a real browser (Debian chromium driven by Playwright), logged in
through the form, on the harbor's real traffic: no console errors, every chart has data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.ui.harbor import REQUESTS, XSS, Harbor
from tests.ui.test_dashboard import CHROMIUM


class Browser:
    """A logged-in page, and every console error, page error and request it produced."""

    def __init__(self, page: Any, url: str) -> None:
        self.page, self.url = page, url
        self.errors: list[str] = []
        self.requested: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requested.append(r.url))

    def open(self, route: str) -> None:
        self.page.goto(f"{self.url}/ui#/{route}")
        self.page.wait_for_function(
            "() => /^(Updated|Error)/.test(document.getElementById('status').textContent)")
        status = self.page.inner_text("#status")
        assert status.startswith("Updated"), status

    def points(self, selector: str) -> int:
        """The points the chart at ``selector`` drew (its data-points), once it has some."""
        self.page.wait_for_selector(f"{selector}[data-points] canvas")
        return int(self.page.get_attribute(selector, "data-points") or 0)


def _login(pw: Any, url: str, key: str) -> tuple[Any, Browser]:
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                 args=["--no-sandbox", "--disable-dev-shm-usage"])
    page = browser.new_context().new_page()
    watched = Browser(page, url)
    page.goto(f"{url}/ui")
    page.wait_for_url(f"{url}/ui/login")
    page.fill("#key", key)
    page.click("#login button[type=submit]")
    page.wait_for_url(f"{url}/ui")
    return browser, watched


@pytest.fixture
def as_role(harbor: Harbor) -> Iterator[Any]:
    """``as_role("admin")``: a chromium page logged in with that role's key."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        opened: list[Any] = []

        def login(role: str) -> Browser:
            browser, watched = _login(pw, harbor.url, harbor.keys[role])
            opened.append(browser)
            return watched

        try:
            yield login
        finally:
            for browser in opened:
                browser.close()


def test_every_page_loads_without_console_errors_and_every_chart_has_data(
        harbor: Harbor, as_role: Any) -> None:
    b = as_role("admin")
    page = b.page

    b.open("models")
    assert page.locator("#models-table tr[data-model=churn]").count() == 1
    b.open("models/churn")
    assert page.locator("#versions-table tbody tr").count() == 2
    assert "champion" in page.inner_text("#versions-table tr[data-version='2']")
    b.open("models/churn/2")
    assert "sha256:" in page.inner_text("#lineage-table")
    assert "gates passed" in page.inner_text("#report-verdict")
    assert "f1" in page.inner_text("#report-metrics")
    assert page.locator("#report-confusion tbody tr").count() == 2
    resolved = page.eval_on_selector("#report-html", "a => a.href")  # against <base>
    assert resolved == page.url.split("/ui")[0] + (
        "/api/v1/models/churn/versions/2/report?format=html")

    b.open("endpoints")
    assert "churn@champion 75%" in page.inner_text("#endpoints-table tr[data-endpoint=churn]")
    b.open("endpoints/churn")
    routes = page.inner_text("#routes-table")
    assert "shadow\tchurn:2" in routes and "fallback 1\tchurn:1" in routes
    for chart in ("#chart-throughput", "#chart-latency", "#chart-errors"):
        assert b.points(chart) >= 1, chart
    assert page.get_attribute("#chart-latency", "data-series") == "3"  # p50, p95, p99
    assert page.inner_text("#traffic-summary").startswith(f"{REQUESTS} requests")
    assert "churn@champion" in page.inner_text("#split-table")
    # Live: the charts are refreshed every few seconds while the page is open.
    before = page.inner_text("#traffic-updated")
    page.wait_for_function(
        f"() => document.getElementById('traffic-updated').textContent !== {before!r}",
        timeout=15_000)

    b.open("drift?endpoint=churn&window=1h")
    assert page.locator("#features tbody tr").count() == 8
    assert b.points("#drift-chart") >= 1
    charts = page.locator(".dist-chart")
    assert charts.count() >= 8
    assert b.points(".dist-chart[data-feature=tenure_months]") >= 2  # bins with a share

    b.open("performance?endpoint=churn&window=1h")
    assert b.points("#accuracy-chart") >= 1
    assert "accuracy=" in page.inner_text("#performance tbody")

    b.open("alerts")
    assert "churn-latency" in page.inner_text("#alerts-active-table")
    assert "FIRING" in page.inner_text("#alerts")

    b.open("deployments")
    ledger = page.inner_text("#deployments-table")
    assert "deploy.kubernetes" in ledger and "endpoint.create" in ledger
    assert "v1 → v2" in ledger
    assert page.locator("#deployments-table tbody tr").count() == 4

    assert page.is_visible("#nav-audit")
    b.open("audit")
    assert page.locator("#audit-table tbody tr").count() >= 10
    page.fill("#audit-action", "deploy.*")
    page.click("#audit-controls button[type=submit]")
    page.wait_for_function(
        "() => document.querySelectorAll('#audit-table tbody tr').length === 1")
    assert "deploy.kubernetes" in page.inner_text("#audit-table")

    assert not b.errors, b.errors
    assert b.requested and all(r.startswith(harbor.url) for r in b.requested), b.requested


def test_markup_in_names_tags_and_descriptions_is_shown_as_text(
        harbor: Harbor, as_role: Any) -> None:
    b = as_role("viewer")
    page = b.page
    b.open("models")
    assert XSS in page.inner_text("#models-table")
    b.open("models/churn")
    assert XSS in page.inner_text("#model-description")
    assert f"team={XSS}" in page.inner_text("#model-tags")
    assert page.locator("main img").count() == 0  # no element was made from the data
    assert page.title() != "owned"
    assert not b.errors, b.errors


def test_a_viewer_is_not_offered_the_audit_trail(harbor: Harbor, as_role: Any) -> None:
    b = as_role("viewer")
    b.open("deployments")
    assert not b.page.is_visible("#nav-audit")
    assert b.page.locator("#deployments-table tbody tr").count() == 4
    assert not b.errors, b.errors


def test_an_endpoint_served_ad_hoc_shows_its_traffic(harbor: Harbor, as_role: Any) -> None:
    """`mlharbor serve MODEL` serves an endpoint that is not stored: the dashboard lists it
    from the prediction log and charts its traffic (what `make run` shows a newcomer)."""
    from datetime import timedelta

    import numpy as np

    from mlharbor.core.clock import utcnow
    from mlharbor.core.records import PredictionRecord
    from mlharbor.monitoring.service import open_prediction_log
    from mlharbor.serving.model import Outputs

    log = open_prediction_log(harbor.settings)
    now = utcnow()
    for i in range(30):
        log.emit(PredictionRecord(f"adhoc-{i}", "scoring", "scoring@champion", 1,
                                  {"x": float(i), "y": 1.0}, Outputs(np.array([i % 2]), None),
                                  0.002 + i / 10_000, now - timedelta(seconds=90 - i)))
    log.close()
    b = as_role("viewer")
    b.open("endpoints")
    row = b.page.inner_text("#endpoints-table tr[data-endpoint=scoring]")
    assert "served ad hoc" in row
    b.open("endpoints/scoring")
    assert "not a stored endpoint" in b.page.inner_text("#endpoint-description")
    assert not b.page.is_visible("#controls")  # the drift pages' form stays on their pages
    assert b.points("#chart-throughput") > 0 and b.points("#chart-latency") > 0
    assert b.errors == [], b.errors
