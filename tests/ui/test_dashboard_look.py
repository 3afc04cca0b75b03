"""Issue 14's dashboard points in a real browser at 1280x800 on the populated harbor: aliases as
arrows, endpoint charts that share the window and fit, throughput that adds up to the summary,
live-accuracy points at their window's end, histogram labels that fit, an audit table that
stays inside the page, the Drift page's endpoint choice, the alert rules in force, resource
use per endpoint and a styled login page."""

from __future__ import annotations

import json
import os
import re
import time
from datetime import timedelta
from typing import Any

import httpx
import numpy as np

from tests.ui.harbor import REQUESTS, Harbor
from tests.ui.test_dashboard import watched_context
from tests.ui.test_pages import Browser

WIDTH = 1280


def _wide(b: Browser) -> Browser:
    b.page.set_viewport_size({"width": WIDTH, "height": 800})
    return b


def _fits_the_page(b: Browser) -> None:
    """Nothing makes the page itself scroll sideways at 1280 px."""
    assert b.page.evaluate("document.documentElement.scrollWidth") <= WIDTH


def test_aliases_read_as_alias_arrow_version(harbor: Harbor, as_role: Any) -> None:
    b = _wide(as_role("viewer"))
    b.open("models")
    row = b.page.inner_text("#models-table tr[data-model=churn]")
    assert "champion → 2" in row and "champion=" not in row and ".0000" not in row
    b.open("models/churn")
    assert "champion → 2" in b.page.inner_text("#versions-table tr[data-version='2']")
    assert "champion" not in b.page.inner_text("#versions-table tr[data-version='1']")
    _fits_the_page(b)
    assert not b.errors, b.errors


# Per chart: its uPlot instance's x range, plot width (CSS px) and what its y axis must fit.
_CHART = """id => {
  const box = document.getElementById(id);
  const u = box.chart;
  const r = box.getBoundingClientRect();
  return {xMin: +box.dataset.xMin, xMax: +box.dataset.xMax, left: r.left, right: r.right,
          width: u.width, xs: u.data[0], ys: u.data.slice(1),
          axisSize: u.axes[1]._size || u.axes[1].size,
          scaleMin: u.scales.x.min, scaleMax: u.scales.x.max};
}"""
_TEXT_WIDTH = """texts => {
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  return Math.max(0, ...texts.map((t) => ctx.measureText(t).width));
}"""


def test_endpoint_charts_share_the_window_fit_1280_and_add_up(harbor: Harbor,
                                                                as_role: Any) -> None:
    b = _wide(as_role("viewer"))
    b.open("endpoints/churn")
    ids = ("chart-throughput", "chart-latency", "chart-errors")
    for chart in ids:
        assert b.points(f"#{chart}") >= 1
    charts = {c: b.page.evaluate(_CHART, c) for c in ids}
    ranges = {(c["xMin"], c["xMax"]) for c in charts.values()}
    assert len(ranges) == 1, ranges  # one time range for all three
    (x_min, x_max), = ranges
    assert abs((x_max - x_min) - 3600) <= 1  # the window asked for (1 hour)
    assert abs(x_max - time.time()) < 120  # ending now
    for name, c in charts.items():
        assert abs(c["scaleMin"] - x_min) <= 1 and abs(c["scaleMax"] - x_max) <= 1, name
        assert c["width"] >= 500, (name, c["width"])  # readable, not a thumbnail
        assert c["right"] <= WIDTH, name
    # Two per row: throughput and latency side by side, error rate below.
    assert charts["chart-latency"]["left"] > charts["chart-throughput"]["right"]
    # Throughput: every bucket is drawn (idle = 0, never a gap), and rate x bucket length
    # adds up to the summary's request count.
    t = charts["chart-throughput"]
    rates = t["ys"][0]
    assert None not in rates
    edges = [t["scaleMin"]]  # the exact range (the data attributes are rounded)
    for mid in t["xs"]:
        edges.append(2 * mid - edges[-1])
    assert abs(edges[-1] - t["scaleMax"]) < 1e-3
    counted = sum(r * (hi - lo) for r, lo, hi in zip(rates, edges, edges[1:], strict=False))
    summary = b.page.inner_text("#traffic-summary")
    assert summary.startswith(f"{REQUESTS} requests")
    assert round(counted) == REQUESTS, (counted, summary)
    # The y axes are wide enough for their longest tick label.
    for name in ids:
        labels = b.page.evaluate(
            "id => document.getElementById(id).chart.axes[1]._values || []", name)
        assert labels, name
        widest = b.page.evaluate(_TEXT_WIDTH, [str(v) for v in labels])
        assert widest + 8 <= charts[name]["axisSize"], (name, labels)
    _fits_the_page(b)
    assert not b.errors, b.errors


def test_live_accuracy_points_sit_at_their_windows_end(harbor: Harbor, as_role: Any) -> None:
    b = _wide(as_role("viewer"))
    b.open("performance?endpoint=churn&window=24h")
    assert b.points("#accuracy-chart") >= 1
    chart = b.page.evaluate(_CHART, "accuracy-chart")
    last = max(x for x in chart["xs"] if x is not None)
    # The window that holds the labels ends now: its point is at now, not an hour back.
    assert abs(last - time.time()) < 120, last - time.time()
    assert "each point at the end of its" in b.page.inner_text("#page-performance figcaption")
    _fits_the_page(b)
    assert not b.errors, b.errors


def test_histogram_labels_fit_their_axis(harbor: Harbor, as_role: Any) -> None:
    b = _wide(as_role("viewer"))
    b.open("drift?endpoint=churn&window=1h")
    b.page.wait_for_selector(".dist-chart[data-ticks] canvas")
    boxes = b.page.locator(".dist-chart")
    assert boxes.count() >= 8
    for i in range(boxes.count()):
        box = boxes.nth(i)
        shown = json.loads(box.get_attribute("data-ticks") or "[]")
        ticks = [t for t in shown if t]
        plot = box.evaluate("b => b.querySelector('.u-over').getBoundingClientRect().width")
        widest = b.page.evaluate(_TEXT_WIDTH, ticks)
        # Each shown label gets at least its own width plus a gap: no two overlap.
        bins = len(shown)
        stride = bins / max(1, len(ticks))
        assert widest + 4 <= plot / bins * stride, (box.get_attribute("data-feature"), ticks)
        assert box.evaluate("b => b.getBoundingClientRect().right") <= WIDTH
    _fits_the_page(b)
    assert not b.errors, b.errors


def test_the_audit_table_stays_inside_the_page(harbor: Harbor, as_role: Any) -> None:
    b = _wide(as_role("admin"))
    b.open("audit")
    table = b.page.locator("#audit-table")
    assert table.locator("tbody tr").count() >= 10
    box = table.evaluate("t => { const b = t.parentElement.getBoundingClientRect(); "
                         "return {scroll: t.parentElement.scrollWidth, "
                         "client: t.parentElement.clientWidth, right: b.right}; }")
    assert box["scroll"] <= box["client"], box  # fits without even scrolling its box
    assert box["right"] <= WIDTH
    # Long details are cut with an ellipsis and kept whole in the cell's title.
    cell = table.locator("tbody tr td.clip").first
    title = cell.get_attribute("title") or ""
    assert title.startswith("{") and title == cell.inner_text()
    _fits_the_page(b)
    assert not b.errors, b.errors


def test_drift_offers_the_endpoints_there_are_and_picks_one_with_a_reference(
        harbor: Harbor, as_role: Any) -> None:
    """'aardvark' comes first by name and has more traffic than 'churn', but its model has no
    reference profile: the page offers both and opens on churn."""
    from mlharbor.core.clock import utcnow
    from mlharbor.core.records import PredictionRecord
    from mlharbor.monitoring.service import open_prediction_log
    from mlharbor.serving.model import Outputs

    log = open_prediction_log(harbor.settings)
    now = utcnow()
    for i in range(REQUESTS + 20):
        log.emit(PredictionRecord(f"aardvark-{i}", "aardvark", "aardvark@champion", 1,
                                  {"x": float(i)}, Outputs(np.array([i % 2]), None),
                                  0.001, now - timedelta(seconds=120 - i)))
    log.close()
    b = _wide(as_role("viewer"))
    b.open("drift")
    options = b.page.eval_on_selector_all("#endpoint option", "os => os.map(o => o.value)")
    assert {"aardvark", "churn"} <= set(options)
    assert b.page.input_value("#endpoint") == "churn"
    assert b.page.locator("#page-drift input[type=text], #controls input").count() == 0
    b.page.wait_for_selector("#features tbody tr")
    assert "churn:" in b.page.inner_text("#verdict")
    assert "no reference" in b.page.inner_text("#endpoint option[value=aardvark]")
    # Choosing another endpoint keeps it in the URL, as before.
    b.page.select_option("#endpoint", "churn")
    b.page.click("#controls button[type=submit]")
    b.page.wait_for_url(re.compile(r".*endpoint=churn.*"))
    assert not b.errors, b.errors


def test_the_alerts_page_lists_the_rules_in_force(harbor: Harbor, as_role: Any) -> None:
    b = _wide(as_role("viewer"))
    b.open("alerts")
    b.page.wait_for_selector("#alert-rules-table")
    rows = b.page.locator("#alert-rules-table tbody tr")
    rules = {rows.nth(i).get_attribute("data-rule"): rows.nth(i).get_attribute("data-state")
             for i in range(rows.count())}
    assert {"default-error-rate", "default-latency-p99", "default-drift",
            "default-live-accuracy", "default-traffic-stop", "default-log-backlog",
            "churn-latency"} == set(rules)
    assert rules["churn-latency"] == "firing"
    assert "default" in b.page.inner_text("#alert-rules-table tr[data-rule=default-drift]")
    assert "file" in b.page.inner_text("#alert-rules-table tr[data-rule=churn-latency]")
    assert "Default rules: on" in b.page.inner_text("#alert-rules-note")
    _fits_the_page(b)
    assert not b.errors, b.errors


def test_an_endpoint_shows_the_resource_use_of_its_serving_process(
        harbor: Harbor, as_role: Any) -> None:
    b = _wide(as_role("viewer"))
    b.open("endpoints/churn")
    b.page.wait_for_selector("#processes-table")
    row = b.page.locator(f"#processes-table tr[data-process$=':{os.getpid()}']")
    assert row.count() == 1  # this test process served the harbor's traffic
    cpu, memory = row.locator("td").nth(1).inner_text(), row.locator("td").nth(2).inner_text()
    assert re.fullmatch(r"\d+\.\d s", cpu) and float(cpu.split()[0]) > 0
    assert re.fullmatch(r"\d+\.\d (KiB|MiB|GiB)", memory)
    models = b.page.inner_text("#models-memory-table")
    assert "churn:1" in models and "churn:2" in models
    assert b.page.inner_text("#card-memory").split("\n")[-1] == memory
    assert not b.errors, b.errors
    # The route behind it, for scripts.
    body = httpx.get(f"{harbor.url}/api/v1/monitoring/endpoints/churn/resources",
                     headers={"Authorization": f"Bearer {harbor.keys['viewer']}"}).json()
    mine = next(p for p in body["processes"] if p["pid"] == os.getpid())
    assert mine["resident_bytes"] > 10 * 2**20 and not mine["stale"]
    assert {(m["model"], m["version"]) for m in mine["models"]} >= {("churn", 1), ("churn", 2)}
    nothing = httpx.get(f"{harbor.url}/api/v1/monitoring/endpoints/nobody/resources",
                        headers={"Authorization": f"Bearer {harbor.keys['viewer']}"}).json()
    assert nothing["processes"] == []


def test_the_login_page_is_styled_under_its_strict_csp(harbor: Harbor) -> None:
    answer = httpx.get(f"{harbor.url}/ui/login")
    csp = answer.headers["content-security-policy"]
    assert "style-src 'self'" in csp and "unsafe-inline" not in csp
    style = httpx.get(f"{harbor.url}/ui/login.css")  # public, like the form
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    with watched_context(harbor.url) as (_context, page):  # fails on a CSP violation
        page.set_viewport_size({"width": WIDTH, "height": 800})
        page.goto(f"{harbor.url}/ui/login")
        look = page.evaluate("""() => {
          const s = (sel) => getComputedStyle(document.querySelector(sel));
          return {body: s("body").backgroundImage, button: s("#login button").backgroundColor,
                  card: s("main").backgroundColor, width: document.querySelector("main")
                    .getBoundingClientRect().width};
        }""")
        assert "gradient" in look["body"]
        assert look["button"] == "rgb(31, 111, 235)"
        assert look["card"] == "rgb(255, 255, 255)" and 300 <= look["width"] <= 460


def test_the_new_routes_need_credentials_and_answer_a_viewer(harbor: Harbor) -> None:
    viewer = {"Authorization": f"Bearer {harbor.keys['viewer']}"}
    for path in ("/api/v1/monitoring/alerts/rules",
                 "/api/v1/monitoring/endpoints/churn/resources", "/ui/login.css"):
        anonymous = httpx.get(f"{harbor.url}{path}")
        assert anonymous.status_code == (200 if path == "/ui/login.css" else 401), path
        assert httpx.get(f"{harbor.url}{path}", headers=viewer).status_code == 200, path
    details = httpx.get(f"{harbor.url}/api/v1/monitoring/endpoints",
                        params={"details": "true"}, headers=viewer).json()["details"]
    churn = next(d for d in details if d["name"] == "churn")
    assert churn["stored"] and churn["requests"] >= REQUESTS and churn["has_reference"]
    assert (churn["model"], churn["version"]) == ("churn", 2)
    bad = httpx.get(f"{harbor.url}/api/v1/monitoring/endpoints/..%2Fx/resources", headers=viewer)
    assert bad.status_code in (404, 422)
