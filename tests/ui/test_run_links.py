"""The dashboard links a version and its runs both ways (issue 16), in Chromium: a version
trained by the real train job (recorded as a run) and reproduced by the real reproduce job
shows, on its page, a link to the run that trained it and to the reproduction; the run page
links back to the version, a reproduction's to the version it re-ran, and a retraining run's
to its job. A viewer's key is enough; the page logs no error."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import mlharbor
from mlharbor.settings import Settings
from tests.support import LiveServer
from tests.ui.test_dashboard import CHROMIUM

RECIPE = """\
data: {path: churn.csv, target: churn, id_columns: [customer_id]}
candidates:
  - name: logistic
    estimator: sklearn.linear_model.LogisticRegression
    params: {max_iter: 300}
validation: {holdout: 0.25, folds: 2, seed: 5, bootstrap: 20}
metrics: {primary: f1}
gates: ["better than baseline"]
register: {name: churn, alias: champion}
"""


@dataclasses.dataclass
class Linked:
    url: str
    key: str
    trained: str  # the run that trained churn:1
    reproduced: str  # the run that reproduced it
    retrained: str  # a run tagged as a retraining job's


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linked]:
    from mlharbor.api.app import create_app
    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.bootstrap.tracking import open_tracker
    from mlharbor.pipelines.train_job import reproduce, train
    from mlharbor.training.recipe import recipe_from_yaml

    tmp = tmp_path_factory.mktemp("run-links")
    pd.read_csv(Path(mlharbor.__file__).parent / "demo" / "churn.csv").head(500).to_csv(
        tmp / "churn.csv", index=False)
    settings = Settings(home=tmp / "home", training={"n_jobs": 1},
                        monitoring={"default_alert_rules": False},
                        pipelines={"run_jobs": False})
    registry = open_registry(settings)
    identities = open_identities(registry)
    identities.create_identity("viewer-1", kind="user", grants=["viewer"], actor="test")
    key = identities.create_key("viewer-1", actor="test")[1]
    tracker = open_tracker(settings, registry=registry)
    try:
        result = train(recipe_from_yaml(RECIPE, base_dir=tmp), registry=registry,
                       settings=settings, tracking=lambda name: tracker.start_run(
                           experiment=name, run_name=f"train {name}"))
        again = reproduce(registry, "churn:1", settings=settings,
                          tracking=lambda name: tracker.start_run(
                              experiment=name, run_name="reproduce churn:1"))
        assert result.run_id and again.run_id and again.matches
        with tracker.start_run(experiment="churn", run_name="retrain churn", tags={
                "mlharbor.job": "0123456789abcdef0123456789abcdef",
                "mlharbor.endpoint": "churn", "mlharbor.trigger": "drift"}) as retrained:
            retrained.log_metrics({"f1": 0.5})
        tracker.flusher.close()
        with LiveServer(create_app(settings, registry=registry)) as server:
            yield Linked(server.url, key, result.run_id, again.run_id, retrained.run_id)
    finally:
        registry.close()


@pytest.fixture
def page(linked: Linked) -> Iterator[tuple[Any, list[str]]]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            tab = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            errors: list[str] = []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(f"{linked.url}/ui/login")
            tab.fill("#key", linked.key)
            tab.click("#login button[type=submit]")
            tab.wait_for_url(f"{linked.url}/ui")
            yield tab, errors
        finally:
            browser.close()


def test_the_version_links_its_run_and_the_run_links_back(
        linked: Linked, page: tuple[Any, list[str]]) -> None:
    tab, errors = page
    tab.goto(f"{linked.url}/ui#/models/churn/1")
    tab.wait_for_selector("#version-run-link")
    run_link = tab.locator("#version-run-link")
    assert run_link.get_attribute("href") == f"#/experiments/churn/runs/{linked.trained}"
    assert linked.trained[:12] in run_link.inner_text()
    assert "of experiment churn (FINISHED)" in tab.inner_text("#version-run")
    # The lineage table shows the rest of the lineage, not the run a second time as JSON.
    assert linked.trained not in tab.inner_text("#lineage-table")
    reproductions = tab.locator("#version-reproductions a")
    assert reproductions.count() == 1
    assert reproductions.first.get_attribute("href") == \
        f"#/experiments/churn/runs/{linked.reproduced}"
    assert "(matched)" in tab.inner_text("#version-reproductions")

    run_link.click()
    tab.wait_for_selector("#run-detail:not([hidden]) #run-version-link")
    assert linked.trained in tab.inner_text("#run-title")
    back = tab.locator("#run-version-link")
    assert back.inner_text() == "churn:1" and back.get_attribute("href") == "#/models/churn/1"
    back.click()
    tab.wait_for_selector("#version-detail:not([hidden]) #version-run-link")
    assert tab.inner_text("#version-title") == "churn:1"

    tab.click("#version-reproductions a")
    tab.wait_for_selector("#run-detail:not([hidden]) #run-reproduces-link")
    assert linked.reproduced in tab.inner_text("#run-title")
    assert tab.get_attribute("#run-reproduces-link", "href") == "#/models/churn/1"
    assert "metrics matched" in tab.inner_text("#run-summary")
    assert tab.locator("#run-version-link").count() == 0  # it registered nothing
    assert not errors, errors


def test_a_retraining_run_links_its_job(linked: Linked, page: tuple[Any, list[str]]) -> None:
    tab, errors = page
    tab.goto(f"{linked.url}/ui#/experiments/churn/runs/{linked.retrained}")
    tab.wait_for_selector("#run-detail:not([hidden]) #run-job-link")
    job = tab.locator("#run-job-link")
    assert job.get_attribute("href") == "#/jobs/0123456789abcdef0123456789abcdef"
    assert "for endpoint churn, trigger drift" in tab.inner_text("#run-summary")
    assert not errors, errors
