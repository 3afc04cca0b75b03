"""A user's existing MLflow training script, run unchanged against a real `mlharbor server`
process, shows up in `mlharbor runs list`, in the /api/v1/runs routes and on the dashboard's
Experiments page in Chromium: the runs table with metric columns the server sorts, the
parameter-vs-metric scatter of the search, a run's metric history over steps, and two runs
side by side. Bad filters and ids get a clear error and change nothing.

Screenshots at 1280x800 go to MLHARBOR_SCREENSHOTS when it is set (docs/screenshots).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlharbor.settings import Settings
from tests.security.fixtures import admin_headers_for
from tests.support import VENV_BIN, cli_env, free_port, run_cli, wait_for_port
from tests.ui.test_dashboard import CHROMIUM

pytestmark = pytest.mark.xdist_group("mlflow-client")

#: What a team already has: plain MLflow tracking code, nothing of mlharbor in it.
USER_SCRIPT = textwrap.dedent('''
    import tempfile, pathlib
    import mlflow

    mlflow.set_experiment("churn-search")
    notes = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    notes.write_text("grid over depth and learning rate")
    with mlflow.start_run(run_name="grid") as parent:
        mlflow.log_param("search", "grid")
        for depth, lr in [(2, 0.1), (4, 0.1), (8, 0.05), (16, 0.01)]:
            with mlflow.start_run(run_name=f"depth={depth}", nested=True):
                mlflow.log_params({"max_depth": depth, "learning_rate": lr})
                mlflow.set_tag("model", "gbt")
                for epoch in range(6):
                    mlflow.log_metric("loss", 1.0 / (epoch + 1) + depth / 100, step=epoch)
                mlflow.log_metrics({"f1": 0.5 + depth / 40, "auc": 0.7 + lr})
                mlflow.log_artifact(str(notes))
        mlflow.log_metric("best_f1", 0.9)
    print(parent.info.run_id)
''')


@dataclasses.dataclass
class Tracked:
    url: str
    key: str
    env: dict[str, str]
    parent: str


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracked]:
    """`mlharbor server` as a user starts it, and the user's script logging into it."""
    root = tmp_path_factory.mktemp("experiments-ui")
    settings = Settings(home=root / "home")
    key = admin_headers_for(settings)["Authorization"].split(" ", 1)[1]
    env = {**os.environ, **cli_env(settings), "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0"}
    port = free_port()
    exe = shutil.which("mlharbor", path=str(VENV_BIN)) or "mlharbor"
    proc = subprocess.Popen([exe, "server", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_for_port(port, proc=proc)
        url = f"http://127.0.0.1:{port}"
        script = root / "train.py"
        script.write_text(USER_SCRIPT)
        user_env = {k: v for k, v in os.environ.items() if not k.startswith("MLHARBOR_")}
        done = subprocess.run(
            [sys.executable, str(script)], cwd=root, capture_output=True, text=True,
            timeout=120, check=False,
            env={**user_env, "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_TOKEN": key})
        assert done.returncode == 0, done.stderr[-3000:]
        yield Tracked(url, key, env, done.stdout.strip().splitlines()[-1])
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert "Traceback" not in output, output[-3000:]


def test_the_script_shows_up_in_mlharbor_runs_list(tracked: Tracked) -> None:
    listed = run_cli("runs", "list", "-e", "churn-search", "--json", env=tracked.env)
    assert listed.returncode == 0, listed.stderr
    runs = {r["name"]: r for r in json.loads(listed.stdout)["runs"]}
    assert set(runs) == {"grid", "depth=2", "depth=4", "depth=8", "depth=16"}
    assert runs["depth=8"]["params"] == {"max_depth": "8", "learning_rate": "0.05"}
    assert runs["depth=8"]["metrics"]["loss"] == pytest.approx(1 / 6 + 0.08)
    assert runs["depth=8"]["parent_run_id"] == tracked.parent
    assert all(r["status"] == "FINISHED" for r in runs.values())
    table = run_cli("runs", "list", "-e", "churn-search", "-f", "metrics.f1 > 0.6",
                    "-o", "metrics.f1 DESC", env=tracked.env)
    assert table.returncode == 0, table.stderr
    lines = [line for line in table.stdout.splitlines() if "depth=" in line]
    assert [line.split()[3] for line in lines] == ["depth=16", "depth=8"]


def test_routes_answer_the_page_and_refuse_bad_input(tracked: Tracked) -> None:
    auth = {"Authorization": f"Bearer {tracked.key}"}
    with httpx.Client(base_url=tracked.url, headers=auth, timeout=30) as http:
        experiments = http.get("/api/v1/experiments").json()["items"]
        assert {"name": "churn-search", "runs": 5}.items() <= next(
            e for e in experiments if e["name"] == "churn-search").items()
        page = http.get("/api/v1/runs", params={
            "experiment": "churn-search", "filter": "params.max_depth = '4'"}).json()
        assert [r["name"] for r in page["runs"]] == ["depth=4"]
        assert {"loss", "f1", "auc"} <= set(page["metric_columns"])
        ordered = http.get("/api/v1/runs", params={
            "experiment": "churn-search", "order_by": "metrics.auc ASC"}).json()["runs"]
        assert [r["name"] for r in ordered][:2] == ["depth=16", "depth=8"]
        assert ordered[-1]["name"] == "grid"  # no auc: last, whichever the direction
        run = http.get(f"/api/v1/runs/{tracked.parent}").json()
        assert len(run["children"]) == 4 and run["metrics"] == {"best_f1": 0.9}
        child = run["children"][0]["run_id"]
        history = http.get(f"/api/v1/runs/{child}/metric-history",
                           params={"key": "loss"}).json()
        assert [p["step"] for p in history["points"]] == list(range(6))
        diff = http.get(f"/api/v1/runs/{child}/diff/{run['children'][1]['run_id']}").json()
        changed = {(r["section"], r["key"]) for r in diff["rows"] if not r["same"]}
        assert ("params", "max_depth") in changed and ("metrics", "f1") in changed
        bad = http.get("/api/v1/runs", params={"filter": "metrics.f1 >> 1"})
        assert bad.status_code == 400
        assert "position 12" in bad.json()["error"]["message"]
        assert http.get("/api/v1/runs", params={"experiment": "nope"}).status_code == 404
        assert http.get("/api/v1/runs/not-a-run").status_code == 400
        assert http.get(f"/api/v1/runs/{'0' * 32}").status_code == 404
        assert http.get(f"/api/v1/runs/{child}/metric-history").status_code == 422
        assert http.get("/api/v1/runs", params={"max_results": 0}).status_code == 422
        # nothing of the refused requests was written
        again = http.get("/api/v1/experiments").json()["items"]
        assert [e["name"] for e in again] == [e["name"] for e in experiments]
    assert httpx.get(f"{tracked.url}/api/v1/runs").status_code == 401


def test_the_experiments_page_in_chromium(tracked: Tracked, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    url = tracked.url
    folder = Path(os.environ.get("MLHARBOR_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/ui/login")
            page.fill("#key", tracked.key)
            page.click("#login button[type=submit]")
            page.wait_for_url(f"{url}/ui")
            page.click("#nav a[data-page=experiments]")
            page.wait_for_selector("#experiments-table tr[data-experiment=churn-search]")
            page.click("#experiments-table a:text('churn-search')")
            page.wait_for_selector("#runs-table")
            assert page.locator("#runs-table tbody tr").count() == 5
            # The server sorts: f1 descending, then ascending on a second click.
            page.click("#runs-table a.sort[data-sort='metrics.f1']")
            page.wait_for_function("() => location.hash.includes('order=')")
            page.wait_for_selector("#runs-table a.sort[data-sort='metrics.f1']:text('▼')")
            names = page.locator("#runs-table tbody tr td:nth-child(3)").all_inner_texts()
            assert names[:4] == ["depth=16", "depth=8", "depth=4", "depth=2"]
            page.select_option("#scatter-param", "max_depth")
            page.select_option("#scatter-metric", "f1")
            page.wait_for_selector("#scatter-chart canvas")
            assert page.get_attribute("#scatter-chart", "data-points") == "4"
            page.screenshot(path=str(folder / "experiments.png"), full_page=True)
            # Two runs side by side.
            page.check("#runs-table tr:has-text('depth=16') input.pick")
            page.check("#runs-table tr:has-text('depth=2') input.pick")
            page.click("#runs-compare")
            page.wait_for_selector("#diff-rows")
            assert page.locator("#diff-rows tr.differs[data-key=max_depth]").count() == 1
            assert page.locator("#diff-rows tr[data-key=model]:not(.differs)").count() == 1
            page.check("#diff-only")
            assert page.locator("#diff-rows tr[data-key=model]").count() == 0
            page.screenshot(path=str(folder / "experiments-diff.png"), full_page=True)
            # A run: its loss over the six steps.
            page.go_back()
            page.wait_for_selector("#runs-table")
            page.click("#runs-table tr:has-text('depth=4') td:nth-child(2) a")
            page.wait_for_selector("#run-charts .chart[data-metric=loss] canvas")
            assert page.get_attribute("#run-charts .chart[data-metric=loss]",
                                      "data-points") == "6"
            assert "max_depth" in page.inner_text("#run-params-table")
            page.screenshot(path=str(folder / "experiments-run.png"), full_page=True)
            assert not errors, errors
            # A bad filter: the parser's message beside the form, no table (the browser
            # logs the refused request's 400 itself).
            page.goto(f"{url}/ui#/experiments/churn-search")
            page.wait_for_selector("#runs-table")
            page.fill("#runs-filter", "metrics.f1 >> 1")
            page.click("#runs-controls button[type=submit]")
            page.wait_for_selector("#runs-error:not([hidden])")
            assert "position 12" in page.inner_text("#runs-error")
            assert page.locator("#runs-table").count() == 0
            assert [e for e in errors if "status of 400" not in e] == [], errors
        finally:
            browser.close()
