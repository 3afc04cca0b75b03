"""Screenshots of every dashboard page at 1280x800 from the populated harbor, for people to
look at (issue 14's note): ``MLHARBOR_SCREENSHOTS=/some/dir`` keeps them, otherwise they go to
a temporary folder. Either way the test checks every page loaded its data (its status line
says "Updated", not an error) and drew its picture; test_dashboard_look.py checks the layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.ui.harbor import Harbor
from tests.ui.test_dashboard import CHROMIUM

PAGES = {  # file name -> hash route, and what must be on it before the picture is taken
    "models": ("models", "#models-table"),
    "model-versions": ("models/churn", "#versions-table"),
    "model-version": ("models/churn/2", "#report-metrics"),
    "endpoints": ("endpoints", "#endpoints-table"),
    "endpoint-detail": ("endpoints/churn", "#processes-table"),
    "drift": ("drift?endpoint=churn&window=1h", ".dist-chart canvas"),
    "live-accuracy": ("performance?endpoint=churn&window=1h", "#accuracy-chart canvas"),
    "alerts": ("alerts", "#alert-rules-table"),
    "deployments": ("deployments", "#deployments-table"),
    "audit": ("audit", "#audit-table"),
}


def test_screenshots_of_every_page(harbor: Harbor, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    target = os.environ.get("MLHARBOR_SCREENSHOTS") or str(tmp_path)
    from playwright.sync_api import sync_playwright

    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.goto(f"{harbor.url}/ui/login")
            page.screenshot(path=str(out / "login.png"))
            page.fill("#key", harbor.keys["admin"])
            page.click("#login button[type=submit]")
            page.wait_for_url(f"{harbor.url}/ui")
            for name, (route, ready) in PAGES.items():
                page.goto(f"{harbor.url}/ui#/{route}")
                page.wait_for_selector(ready)
                page.wait_for_function(
                    "() => /^Updated/.test(document.getElementById('status').textContent)")
                page.wait_for_timeout(300)  # charts drawn after the data
                page.screenshot(path=str(out / f"{name}.png"))  # what 1280x800 shows
                page.screenshot(path=str(out / f"{name}-full.png"), full_page=True)
            page.goto(f"{harbor.url}/docs")
            page.wait_for_selector(".swagger-ui .opblock")
            page.screenshot(path=str(out / "docs.png"))
        finally:
            browser.close()
    shots = {p.name: p.stat().st_size for p in out.glob("*.png")}
    expected = {"login.png", "docs.png", *(f"{n}.png" for n in PAGES),
                *(f"{n}-full.png" for n in PAGES)}
    assert expected <= set(shots), sorted(expected - set(shots))
    assert all(shots[name] > 5_000 for name in expected), shots  # a page, not a blank
