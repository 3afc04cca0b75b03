"""The Jobs page and the estimated accuracy on Live accuracy, in a real browser (Debian
chromium driven by Playwright) signed in through the form, on a control plane of its own.

Jobs in every state are made by the real job store and runner: rollouts run to a promotion and
to a rollback on scripted traffic figures (the rollout's own seam, as tests/pipelines/
test_rollout.py does), two park waiting for an approval, a retrain-shaped job runs scripted
snapshot/train/validate steps whose results are the real records, one is left running (its
step started under a held lease), one queued, one cancelled. The approve and reject lines the
page shows are then run as shown (the CLI, and curl against the live server).

Screenshots at 1280x800 go to MLHARBOR_SCREENSHOTS when it is set.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from mlharbor.core.loop import (
    ABDecision,
    ABDesign,
    ABVerdict,
    RolloutDecision,
    RolloutPhase,
    RolloutVerdict,
)
from mlharbor.core.records import (
    DatasetPart,
    DatasetSnapshot,
    EvaluationReport,
    GateResult,
    to_dict,
)
from mlharbor.pipelines.jobs import (
    Fence,
    JobKind,
    JobRunner,
    JobState,
    JobStore,
    Step,
    StepState,
)
from mlharbor.pipelines.rollout import rollout_steps
from mlharbor.settings import Settings
from tests.pipelines import test_rollout as rollout_scene
from tests.pipelines import test_triggers as scene
from tests.support import LiveServer, cli_env, run_cli
from tests.ui.test_dashboard import CHROMIUM
from tests.ui.test_pages import Browser

SNAPSHOT = DatasetSnapshot(
    uri="artifact:sha256:" + "ab" * 32, fingerprint="sha256:" + "5e" * 32, format="parquet",
    rows=1240, columns={"tenure": "float64", "churn": "int64"}, target="churn",
    parts=(DatasetPart("champion_data", "artifact:sha256:" + "cd" * 32, "sha256:" + "cd" * 32,
                       1000),
           DatasetPart("production", "log:fraud", "sha256:" + "ef" * 32, 240)),
    created_at=datetime(2026, 1, 5, 9, 30, tzinfo=UTC))
REPORT = EvaluationReport(
    ref="fraud:4", primary_metric="f1", metrics={"accuracy": 0.861, "f1": 0.712},
    baseline={"accuracy": 0.734, "f1": 0.0}, champion_ref="fraud:3",
    champion={"accuracy": 0.842, "f1": 0.688},
    gates=(GateResult("better than baseline", True, "f1 0.712 > baseline 0.000"),
           GateResult("not worse than champion by more than 0.01", True,
                      "f1 0.712 vs champion 0.688")),
    passed=True, reason=None, holdout_rows=310)

#: An A/B look as the A/B rollout records it (its computation is tested in tests/pipelines).
AB_DECISION = RolloutDecision(
    job_id="ab", step=1, phase=RolloutPhase.AB, verdict=RolloutVerdict.PROMOTE,
    reason="A/B at the horizon: the challenger is better", weights={"recs:2": 100},
    guard_metrics={"control_accuracy": 0.81, "challenger_accuracy": 0.86,
                   "control_labelled": 906.0},
    at=datetime(2026, 1, 5, 10, 0, tzinfo=UTC),
    test=ABDecision(verdict=ABVerdict.CHALLENGER_BETTER, design=ABDesign.FIXED, look=1,
                    information_fraction=1.0, effect=0.05, ci_low=0.021, ci_high=0.079, z=3.4,
                    p_value=0.0007, boundary_z=1.96, alpha_spent=0.05, n_control=906,
                    n_challenger=906, planned_n_per_variant=906))


@dataclasses.dataclass
class JobsHarbor:
    url: str
    keys: dict[str, str]
    settings: Settings
    registry: Any
    ids: dict[str, str]  # what the job shows -> job id
    fence: Fence  # the running job's hold, to move it on while the page watches


def _rollout_runner(registry: Any, kind: str, signals: Any, **spec: Any) -> JobRunner:
    steps = rollout_steps(rollout_scene.spec(**spec), registry=registry, signals=signals,
                          poll_seconds=0.05)
    return JobRunner(JobStore(registry.store), [JobKind(kind, tuple(steps))], poll_seconds=0.1)


def _run(runner: JobRunner, kind: str, endpoint: str, request: dict[str, Any]) -> str:
    job, created = runner.submit(kind, endpoint, request, actor="test")
    assert created
    runner.run_once()
    return job.id


def _log_scored_traffic(settings: Settings, registry: Any) -> None:
    """A classifier's predictions with probabilities over the last day, all labelled: a
    reference long before, an A/A window and a covariate-shifted one later."""
    from mlharbor.monitoring.service import Monitor

    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(4000, 2))
    model = LogisticRegression().fit(x_train, scene.concept(rng, x_train))
    now = datetime.now(UTC)
    monitor = Monitor(settings, registry)
    try:
        # Each lands inside one hour of the page's 24 h grid (requests of 200 rows, one a
        # minute, well clear of the hour boundaries).
        for name, at, x in (
                ("ref", now - timedelta(hours=20, minutes=45), rng.normal(size=(3000, 2))),
                ("shift", now - timedelta(hours=8, minutes=45),
                 np.column_stack([rng.normal(1.5, 0.4, 800), rng.normal(0.0, 0.5, 800)])),
                ("aa", now - timedelta(hours=3, minutes=45), rng.normal(size=(800, 2)))):
            frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1]})
            ids = scene.log_rows(monitor, frame, at, prefix=name, batch=200,
                                 predictions=model.predict(x),
                                 probabilities=model.predict_proba(x))
            scene.label(monitor, ids, scene.concept(rng, x), batch=200)
    finally:
        monitor.log.close()


@pytest.fixture(scope="module")
def jobs_harbor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsHarbor]:
    from mlharbor.api.app import create_app
    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.registry.endpoints import EndpointService

    tmp = tmp_path_factory.mktemp("jobs-page")
    settings = Settings(home=tmp / "home", pipelines={"run_jobs": False})
    registry = open_registry(settings)
    identities = open_identities(registry)
    keys = {}
    for role in ("admin", "viewer"):
        identities.create_identity(f"{role}-1", kind="user", grants=[role], actor="test")
        keys[role] = identities.create_key(f"{role}-1", actor="test")[1]
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    for _ in range(3):
        registry.register_version("churn", bundle)
    registry.set_alias("churn", "champion", 1)
    endpoints = EndpointService(registry)
    for name in ("churn", "churn-eu", "churn-us"):
        endpoints.create({"name": name, "routes": [{"ref": "churn@champion"}]}, actor="test")
    _log_scored_traffic(settings, registry)

    ids: dict[str, str] = {}
    canary = {"canary": {"steps": [25, 100], "hold": {"requests": 10, "duration": "1s"}}}
    ids["promoted"] = _run(_rollout_runner(registry, "rollout", rollout_scene.Scripted(),
                                           **canary),
                           "rollout", "churn", {"model": "churn", "challenger": 2,
                                                "trigger": "drift",
                                                "reason": "drift in 3 of 4 windows"})
    ids["rolled_back"] = _run(
        _rollout_runner(registry, "rollout", rollout_scene.Scripted(challenger_accuracy=0.3),
                        **canary),
        "rollout", "churn", {"model": "churn", "challenger": 3, "trigger": "manual"})
    approval = _rollout_runner(registry, "rollout-approval", rollout_scene.Scripted(),
                               approval=True, **canary)
    ids["waiting"] = _run(approval, "rollout-approval", "churn",
                          {"model": "churn", "challenger": 3, "trigger": "metric_floor",
                           "reason": "accuracy 0.71 below 0.80"})
    ids["waiting_eu"] = _run(approval, "rollout-approval", "churn-eu",
                             {"model": "churn", "challenger": 3, "trigger": "manual"})
    ids["waiting_us"] = _run(approval, "rollout-approval", "churn-us",
                             {"model": "churn", "challenger": 3, "trigger": "manual"})

    def scripted(result: dict[str, Any]) -> Any:
        return lambda _ctx: result

    retrain = JobRunner(JobStore(registry.store), [JobKind("retrain", (
        Step("snapshot", scripted({"snapshot": to_dict(SNAPSHOT), "base": "fraud:3",
                                   "model": "fraud", "champion_alias": "champion"})),
        Step("train", scripted({"version": "fraud:4", "status": "ready", "reused": False,
                                "winner": "logistic", "base": "fraud:3",
                                "run_id": "ab" * 16, "experiment": "fraud"})),
        Step("validate", scripted({**to_dict(REPORT), "challenger": "fraud:4",
                                   "base": "fraud:3"})),
    ))])
    ids["retrained"] = _run(retrain, "retrain", "fraud",
                            {"trigger": "schedule", "reason": "schedule '0 3 * * *'"})
    ab = JobRunner(JobStore(registry.store), [JobKind("ab", (
        Step("ab-look-1", scripted({"decision": to_dict(AB_DECISION)})),))])
    ids["ab"] = _run(ab, "ab", "recs", {"trigger": "manual", "reason": "A/B test"})
    store = JobStore(registry.store)
    running, _ = store.submit("retrain", "pricing", {"trigger": "estimated_floor",
                                                     "reason": "estimated accuracy 0.74"},
                              ("snapshot", "train", "validate"), actor="mlharbor-triggers")
    claimed = store.claim("worker-1", ["retrain"], timedelta(hours=1))
    assert claimed is not None and claimed.id == running.id
    fence = Fence(running.id, "worker-1", claimed.attempt)
    store.start_step(fence, 0, timedelta(hours=1))
    ids["running"] = running.id
    ids["queued"] = store.submit("retrain", "search", {"trigger": "manual"},
                                 ("snapshot", "train", "validate"), actor="admin-1")[0].id
    cancelled = store.submit("retrain", "ads", {"trigger": "manual"},
                             ("snapshot", "train", "validate"), actor="admin-1")[0]
    store.cancel(cancelled.id, actor="admin-1", reason="asked by mistake")
    ids["cancelled"] = cancelled.id
    try:
        with LiveServer(create_app(settings, registry=registry)) as server:
            yield JobsHarbor(server.url, keys, settings, registry, ids, fence)
    finally:
        registry.close()


@pytest.fixture
def signed_in(jobs_harbor: JobsHarbor) -> Iterator[Any]:
    """``signed_in("admin")``: a 1280x800 chromium page signed in with that role's key."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])

        def login(role: str) -> Browser:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            watched = Browser(page, jobs_harbor.url)
            page.goto(f"{jobs_harbor.url}/ui/login")
            page.fill("#key", jobs_harbor.keys[role])
            page.click("#login button[type=submit]")
            page.wait_for_url(f"{jobs_harbor.url}/ui")
            return watched

        try:
            yield login
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> None:
    target = os.environ.get("MLHARBOR_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(300)
        page.screenshot(path=str(Path(target) / f"{name}.png"))
        page.screenshot(path=str(Path(target) / f"{name}-full.png"), full_page=True)


def clean(b: Browser, url: str) -> None:
    assert not b.errors, b.errors
    assert b.requested and all(r.startswith(url) for r in b.requested), b.requested


def test_the_list_shows_every_job_with_its_state(jobs_harbor: JobsHarbor,
                                                 signed_in: Any) -> None:
    b = signed_in("viewer")
    page = b.page
    b.open("jobs")
    ids = jobs_harbor.ids
    store = JobStore(jobs_harbor.registry.store)
    shown = {key: page.get_attribute(f"#jobs-table tr[data-job='{job}']", "data-state")
             for key, job in ids.items()}
    # What the store says (other tests approve and reject the waiting ones) ...
    assert shown == {key: store.get(job).state.value for key, job in ids.items()}
    assert page.locator("#jobs-table tbody tr").count() == len(ids)
    # ... and the jobs no test changes, in every state.
    assert {shown[k] for k in ("promoted", "rolled_back", "running", "queued", "cancelled")} \
        == {"succeeded", "failed", "running", "queued", "cancelled"}
    assert page.locator("#jobs-table .badge.state-running").count() == 1
    promoted = page.inner_text(f"#jobs-table tr[data-job='{ids['promoted']}']")
    assert "promoted" in promoted and "churn" in promoted and "rollout" in promoted
    assert "drift: drift in 3 of 4 windows" in promoted and "3 of 3" in promoted
    assert "rolled back" in page.inner_text(f"#jobs-table tr[data-job='{ids['rolled_back']}']")
    queued = page.inner_text(f"#jobs-table tr[data-job='{ids['queued']}']")
    assert "\tnot yet\t" in queued and "search" in queued
    # The state filter keeps its choice in the hash.
    page.select_option("#jobs-state", "succeeded")
    page.click("#jobs-controls button[type=submit]")
    page.wait_for_function("() => document.querySelectorAll('#jobs-table tbody tr').length === 3")
    assert "state=succeeded" in page.url
    b.open("jobs")
    screenshot(page, "jobs")
    clean(b, jobs_harbor.url)


def test_a_rollout_shows_its_timeline_and_canary_decisions(jobs_harbor: JobsHarbor,
                                                          signed_in: Any) -> None:
    b = signed_in("viewer")
    page = b.page
    b.open(f"jobs/{jobs_harbor.ids['promoted']}")
    # One bar per step, on one axis: each starts where (or after) the previous ended.
    assert page.get_attribute("#job-timeline", "data-bars") == "3"
    bars = page.locator("#job-timeline rect.bar")
    assert bars.count() == 3
    xs = [float(bars.nth(i).get_attribute("x") or 0) for i in range(3)]
    widths = [float(bars.nth(i).get_attribute("width") or 0) for i in range(3)]
    assert xs == sorted(xs) and xs[1] >= xs[0] + widths[0] - 1
    assert [bars.nth(i).get_attribute("data-step") for i in range(3)] == [
        "canary-25", "canary-100", "promote"]
    first = page.inner_text("#job-steps article[data-step='canary-25']")
    assert "advance" in first and "churn:1 75% · churn:2 25%" in first
    assert "Accuracy effect:" in first and "sequential test, look 1" in first
    assert "challenger requests" in first and "challenger error rate" in first
    promote = page.inner_text("#job-steps article[data-step='promote']")
    assert "promote" in promote and "churn:2 100%" in promote
    assert page.inner_text("#job-actions") == ""  # a finished job offers no action
    screenshot(page, "job-detail")

    b.open(f"jobs/{jobs_harbor.ids['rolled_back']}")
    assert "rolled back" in page.inner_text("#job-title")
    failed = page.locator("#job-steps article[data-state='failed']")
    assert failed.count() == 1
    text = failed.inner_text()
    assert "rollback" in text and "finds the challenger worse" in text
    assert "churn:2 100%" in text and "challenger worse" in text  # v2 was promoted before
    clean(b, jobs_harbor.url)


def test_a_retrain_shows_its_snapshot_challenger_and_gates(jobs_harbor: JobsHarbor,
                                                          signed_in: Any) -> None:
    b = signed_in("viewer")
    page = b.page
    b.open(f"jobs/{jobs_harbor.ids['retrained']}")
    snapshot = page.inner_text("#job-steps article[data-step='snapshot']")
    assert SNAPSHOT.fingerprint in snapshot and "1240 rows" in snapshot
    assert "champion_data" in snapshot and "production" in snapshot
    assert "fraud:4 (ready)" in page.inner_text("#job-steps article[data-step='train']")
    # the training's run, on the Experiments page
    assert page.get_attribute("#job-run-link", "href") == f"#/experiments/fraud/runs/{'ab' * 16}"
    validate = page.inner_text("#job-steps article[data-step='validate']")
    assert "fraud:4 judged against fraud:3 on 310 holdout rows" in validate
    assert "0.7120" in validate and "0.6880" in validate  # challenger vs champion
    assert "✓ better than baseline" in validate
    assert "✓ not worse than champion by more than 0.01" in validate
    clean(b, jobs_harbor.url)


def test_an_a_b_look_shows_its_effect_size_with_the_interval(jobs_harbor: JobsHarbor,
                                                              signed_in: Any) -> None:
    b = signed_in("viewer")
    b.open(f"jobs/{jobs_harbor.ids['ab']}")
    look = b.page.inner_text("#job-steps article[data-step='ab-look-1']")
    assert "Effect size: +0.0500 [+0.0210, +0.0790]" in look
    assert "fixed test, look 1" in look and "p = 0.000700" in look
    assert "boundary |z| ≥ 1.96" in look and "verdict challenger better" in look
    assert "recs:2 100%" in look and "control labelled\n906" in look
    clean(b, jobs_harbor.url)


def test_a_waiting_job_shows_the_commands_that_approve_or_reject_it(
        jobs_harbor: JobsHarbor, signed_in: Any) -> None:
    job_id, eu_id = jobs_harbor.ids["waiting"], jobs_harbor.ids["waiting_eu"]
    viewer = signed_in("viewer")
    viewer.open(f"jobs/{job_id}")
    assert viewer.page.is_visible("#job-actions-denied")  # a viewer may not: no commands
    assert viewer.page.locator("#job-commands").count() == 0
    clean(viewer, jobs_harbor.url)

    b = signed_in("admin")
    page = b.page
    b.open(f"jobs/{job_id}")
    assert page.get_attribute("#job-timeline rect.bar.waiting", "data-step") == "approval"
    assert page.text_content("#cmd-approve-cli") == f"mlharbor jobs approve {job_id}"
    assert page.text_content("#cmd-reject-cli") == f"mlharbor jobs reject {job_id}"
    assert page.text_content("#cmd-cancel-cli") == f"mlharbor jobs cancel {job_id}"
    page.fill("#job-reason", "canary plan reviewed; it's fine")
    approve = page.text_content("#cmd-approve-cli") or ""
    assert approve == (f"mlharbor jobs approve {job_id} --reason "
                       "'canary plan reviewed; it'\\''s fine'")
    screenshot(page, "job-waiting")
    # The line works as shown: the job is approved (queued again) with that reason, and the
    # page, refreshing while the job is active, now offers only cancel, keeping nothing stale.
    env = cli_env(jobs_harbor.settings)
    done = run_cli(*shlex.split(approve)[1:], env=env)
    assert done.returncode == 0, done.stderr
    page.wait_for_function("() => document.getElementById('job-actions').dataset.state "
                           "=== 'queued'")
    assert page.locator("#cmd-approve-cli").count() == 0
    assert page.text_content("#cmd-cancel-cli") == f"mlharbor jobs cancel {job_id}"
    job = JobStore(jobs_harbor.registry.store).get(job_id)
    assert job.state is JobState.QUEUED
    approval = next(s for s in job.steps if s.name == "approval")
    assert approval.progress is not None
    assert approval.progress["approval"]["reason"] == "canary plan reviewed; it's fine"

    # The curl line rejects the other waiting job through the API with an API key.
    b.open(f"jobs/{eu_id}")
    page.fill("#job-reason", "not this week")
    curl = page.text_content("#cmd-reject-curl") or ""
    assert f"/api/v1/jobs/{eu_id}/reject" in curl and "$MLHARBOR_KEY" in curl
    assert curl.startswith("curl -fsS -X POST -H \"Authorization: Bearer $MLHARBOR_KEY\"")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    ran = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "MLHARBOR_KEY": jobs_harbor.keys["admin"]},
                         check=False)
    assert ran.returncode == 0, ran.stderr
    rejected = JobStore(jobs_harbor.registry.store).get(eu_id)
    assert rejected.state is JobState.FAILED and "not this week" in (rejected.error or "")
    clean(b, jobs_harbor.url)


def test_a_running_job_refreshes_and_offers_cancel(jobs_harbor: JobsHarbor,
                                                   signed_in: Any) -> None:
    b = signed_in("admin")
    page = b.page
    job_id = jobs_harbor.ids["running"]
    b.open(f"jobs/{job_id}")
    assert page.get_attribute("#job-timeline rect.bar", "data-state") == "running"
    assert page.text_content("#cmd-cancel-cli") == f"mlharbor jobs cancel {job_id}"
    assert page.locator("#cmd-approve-cli").count() == 0
    # The runner finishes the step: the page shows it without being reloaded.
    store = JobStore(jobs_harbor.registry.store)
    store.finish_step(jobs_harbor.fence, 0, StepState.SUCCEEDED,
                      result={"snapshot": to_dict(SNAPSHOT), "base": "pricing:2"})
    page.wait_for_selector("#job-steps article[data-step='snapshot'][data-state='succeeded']")
    assert SNAPSHOT.fingerprint in page.inner_text("#job-steps article[data-step='snapshot']")
    clean(b, jobs_harbor.url)


def test_live_accuracy_shows_the_estimate_beside_the_realised_accuracy(
        jobs_harbor: JobsHarbor, signed_in: Any) -> None:
    b = signed_in("viewer")
    page = b.page
    b.open("performance?endpoint=churn&window=24h")
    assert b.points("#accuracy-chart") == 3
    labels = page.get_attribute("#accuracy-chart", "data-labels") or ""
    assert "accuracy v1" in labels and "estimated accuracy v1" in labels
    rows = page.locator("#performance tbody tr")
    assert rows.count() == 3
    cells = [rows.nth(i).locator("td").nth(4) for i in range(3)]
    texts = [c.inner_text() for c in cells]
    # The first window (the reference itself) has nothing labelled before it: it says so.
    assert texts[0].startswith("none: no labelled production rows of version 1")
    # The later two are estimated, fitted on what was labelled before them, and the realised
    # accuracy from feedback lies inside the stated interval.
    for text in texts[1:]:
        assert "over 800 rows; realised" in text and text.endswith("(inside)"), text
    note = page.inner_text("#estimate-note")
    assert "0.0096" in note and "200 windows" in note and "more than two classes" in note
    screenshot(page, "live-accuracy-estimated")
    clean(b, jobs_harbor.url)


def test_a_person_approves_a_waiting_job_with_the_pages_button(
        jobs_harbor: JobsHarbor, signed_in: Any) -> None:
    """The dashboard posts the decision with its session (same origin, its own header); the
    job is queued again with the reason, and the page redraws for the new state."""
    job_id = jobs_harbor.ids["waiting_us"]
    viewer = signed_in("viewer")
    viewer.open(f"jobs/{job_id}")
    assert viewer.page.locator("#job-approve").count() == 0
    b = signed_in("admin")
    page = b.page
    b.open(f"jobs/{job_id}")
    page.fill("#job-reason", "looks good")
    page.click("#job-approve")
    page.wait_for_function("() => document.getElementById('job-actions').dataset.state "
                           "=== 'queued'")
    job = JobStore(jobs_harbor.registry.store).get(job_id)
    assert job.state is JobState.QUEUED
    approval = next(s for s in job.steps if s.name == "approval")
    assert approval.progress is not None
    assert approval.progress["approval"]["reason"] == "looks good"
    assert approval.progress["approval"]["actor"] == "admin-1"
    clean(b, jobs_harbor.url)


def test_the_session_cookie_posts_only_dashboard_decisions_from_this_origin(
        jobs_harbor: JobsHarbor) -> None:
    url = jobs_harbor.url
    login = httpx.post(f"{url}/ui/login", data={"key": jobs_harbor.keys["admin"]},
                       headers={"Origin": url})
    assert login.status_code == 303
    cookie = {"Cookie": login.headers["set-cookie"].split(";")[0]}
    target = f"{url}/api/v1/jobs/{jobs_harbor.ids['cancelled']}/approve"
    own = {"Origin": url, "X-Mlharbor-Dashboard": "1"}
    # Refused before any handler runs: no dashboard header, another site, or another route.
    assert httpx.post(target, json={}, headers={**cookie, "Origin": url}).status_code == 401
    assert httpx.post(target, json={}, headers={
        **cookie, "Origin": "https://evil.example", "X-Mlharbor-Dashboard": "1"}
    ).status_code == 401
    assert httpx.post(target, json={}, headers={
        **cookie, **own, "Sec-Fetch-Site": "cross-site"}).status_code == 401
    assert httpx.post(f"{url}/api/v1/endpoints/churn/retrain", json={},
                      headers={**cookie, **own}).status_code == 401
    # The dashboard's own request reaches the handler (this job was cancelled: a 409).
    answer = httpx.post(target, json={}, headers={**cookie, **own})
    assert answer.status_code == 409, answer.text
