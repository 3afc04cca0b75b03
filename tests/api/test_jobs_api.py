"""The jobs API: a real `mlharbor server` runs a retrain asked for over HTTP to a decision,
visible through /api/v1/jobs and the deployment ledger; approve/reject/cancel and the manual
trigger over HTTP; bad input on every job route is a 4xx naming the field and writes nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlharbor.pipelines.jobs import AwaitApproval, JobKind, JobRunner, JobState, Step
from mlharbor.registry.endpoints import EndpointService
from mlharbor.settings import Settings
from tests.pipelines.loophome import apply_policy, build_champion_home, copy_home, fast_policy
from tests.support import VENV_BIN, LiveServer, cli_env, free_port, wait_for_port

TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def base_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_champion_home(tmp_path_factory.mktemp("jobs-api"))


def admin_key(settings: Settings) -> str:
    from mlharbor.bootstrap import open_identities, open_registry

    registry = open_registry(settings)
    try:
        identities = open_identities(registry)
        identities.create_identity("ops", kind="user", grants=["admin"], actor="test")
        return str(identities.create_key("ops", actor="test")[1])
    finally:
        registry.close()


def poll(read: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool],
         deadline_s: float = 240.0) -> dict[str, Any]:
    """Read until ``done`` or the deadline (a hang guard, not a speed check)."""
    end = time.monotonic() + deadline_s
    while True:
        body = read()
        if done(body):
            return body
        if time.monotonic() > end:
            raise AssertionError(f"not done before the deadline: {body}")
        time.sleep(0.3)


# -- a real server runs the loop --------------------------------------------------------------

@pytest.mark.slow
def test_the_server_runs_a_retrain_asked_for_over_http_to_a_promotion(
        base_home: Path, tmp_path: Path) -> None:
    from mlharbor.bootstrap import open_registry

    settings = Settings(home=copy_home(base_home, tmp_path / "home"))
    registry = open_registry(settings)
    try:
        apply_policy(registry, fast_policy())
    finally:
        registry.close()
    key = admin_key(settings)
    env = {**os.environ, **cli_env(settings), "MLHARBOR_PIPELINES__JOB_POLL_S": "0.2",
           "MLHARBOR_TRAINING__N_JOBS": "1"}
    port = free_port()
    exe = shutil.which("mlharbor", path=str(VENV_BIN)) or "mlharbor"
    proc = subprocess.Popen([exe, "server", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_for_port(port, timeout=60, proc=proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as http:
            asked = http.post("/api/v1/endpoints/churn/retrain",
                              json={"reason": "asked over HTTP"})
            assert asked.status_code == 202, asked.text
            job_id = asked.json()["job"]["id"]
            assert asked.json()["created"] is True
            again = http.post("/api/v1/endpoints/churn/retrain", json={})
            assert again.status_code == 200 and again.json()["created"] is False
            assert again.json()["job"]["id"] == job_id  # one job per endpoint

            job = poll(lambda: http.get(f"/api/v1/jobs/{job_id}").json(),
                       lambda b: b.get("state") in TERMINAL)
            assert job["state"] == "succeeded", job["error"]
            assert job["outcome"] == "promoted"
            assert job["request"]["reason"] == "asked over HTTP"
            assert [t["step"] for t in job["timeline"]] == [
                "snapshot", "train", "validate", "canary-100", "promote"]
            assert all(t["state"] == "succeeded" for t in job["timeline"])
            assert [d["verdict"] for d in job["decisions"]] == ["advance", "promote"]
            assert job["steps"][1]["result"]["version"] == "churn:2"

            listed = http.get("/api/v1/jobs", params={"state": "succeeded",
                                                     "endpoint": "churn"}).json()
            assert [j["id"] for j in listed["items"]] == [job_id]
            logs = http.get(f"/api/v1/jobs/{job_id}/logs").json()
            assert logs["outcome"] == "promoted"
            steps = {e["step"] for e in logs["events"]}
            assert {"snapshot", "train", "validate", "canary-100", "promote"} <= steps
            assert any(e["event"] == "change" and e["step"] == "promote"
                       for e in logs["events"])

            # The ledger names the job behind every alias and weight move it made.
            ledger = http.get("/api/v1/deployments").json()["items"]
            by_job = [e for e in ledger if e["actor"] == f"job:{job_id}"]
            champion = [e for e in by_job if e["subject"] == "churn@champion"]
            assert [(e["from_version"], e["to_version"]) for e in champion] == [(1, 2)]
            weights = [e for e in by_job if e["kind"] == "endpoint"]
            assert len(weights) == 2 and all(f"rollout {job_id}" in e["reason"]
                                             for e in weights)
            history = http.get("/api/v1/models/churn/alias-history",
                               params={"alias": "champion"}).json()["items"]
            assert history[-1]["to_version"] == 2 and job_id in history[-1]["reason"]
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output


# -- the routes in process, against a registry without training --------------------------------

@pytest.fixture
def simple(settings: Settings, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """An app (no background runner) over a registry with churn:1 behind endpoint churn."""
    from mlharbor.api.app import create_app
    from mlharbor.bootstrap import open_registry

    settings = settings.model_copy(update={"pipelines": settings.pipelines.model_copy(
        update={"run_jobs": False})})
    registry = open_registry(settings)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    registry.register_version("churn", bundle)
    EndpointService(registry).create({"name": "churn", "routes": [{"ref": "churn:1"}]},
                                     actor="setup")
    app = create_app(settings, registry=registry)
    with LiveServer(app) as live:
        yield live, app
    registry.close()


def _key(app: Any, *grants: str) -> dict[str, str]:
    identities = app.state.services.identities
    name = "-".join(g.replace("@", ".").replace(":", ".") for g in grants) + "-user"
    identities.create_identity(name, kind="user", grants=list(grants), actor="test")
    return {"Authorization": f"Bearer {identities.create_key(name, actor='test')[1]}"}


def _review_runner(app: Any) -> JobRunner:
    """A runner of a one-step kind that waits for a human, in this process."""
    def review(ctx: Any) -> dict[str, Any]:
        if ctx.approval is None:
            raise AwaitApproval("a human decides")
        return {"approved_by": ctx.approval.actor}

    return JobRunner(app.state.services.jobs, [JobKind("review", (Step("review", review),))])


def _state(app: Any) -> tuple[Any, int]:
    jobs = [j.to_dict() for j in app.state.services.jobs.list_jobs(limit=1000)]
    return jobs, sum(1 for _ in app.state.registry.store.iter_audit())


def test_approve_reject_and_cancel_over_http(simple: tuple[Any, Any]) -> None:
    live, app = simple
    admin = _key(app, "admin")
    runner = _review_runner(app)
    with httpx.Client(base_url=live.url, timeout=20) as http:
        job, _ = runner.submit("review", "churn", {}, actor="test")
        assert runner.run_once() is not None
        waiting = http.get(f"/api/v1/jobs/{job.id}", headers=admin).json()
        assert waiting["state"] == "waiting" and waiting["outcome"] == "waiting"
        approved = http.post(f"/api/v1/jobs/{job.id}/approve", headers=admin,
                             json={"reason": "looks right"})
        assert approved.status_code == 200 and approved.json()["state"] == "queued"
        done = runner.run_once()
        assert done is not None and done.state is JobState.SUCCEEDED
        assert done.steps[0].result["approved_by"] == "admin-user"

        second, _ = runner.submit("review", "churn", {}, actor="test")
        runner.run_once()
        rejected = http.post(f"/api/v1/jobs/{second.id}/reject", headers=admin,
                             json={"reason": "not now"})
        assert rejected.status_code == 200 and rejected.json()["state"] == "failed"
        assert "not now" in rejected.json()["error"]

        third, _ = runner.submit("review", "churn", {}, actor="test")
        cancelled = http.post(f"/api/v1/jobs/{third.id}/cancel", headers=admin)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        record = [e for e in app.state.registry.store.iter_audit()
                  if e.action == "job.approve"][-1]
        assert record.actor == "admin-user" and record.details["reason"] == "looks right"

        logs = http.get(f"/api/v1/jobs/{job.id}/logs", headers=admin).json()
        assert [e["event"] for e in logs["events"] if e["step"] is None] == ["submit"]
        assert {"waiting", "approve", "step.succeeded"} <= {e["event"] for e in
                                                            logs["events"]}


def test_a_viewer_reads_jobs_but_only_endpoint_writers_act_on_them(
        simple: tuple[Any, Any]) -> None:
    live, app = simple
    viewer, deployer = _key(app, "viewer"), _key(app, "deployer")
    scoped = _key(app, "viewer", "deployer@endpoint:churn")
    job, _ = _review_runner(app).submit("review", "churn", {}, actor="test")
    with httpx.Client(base_url=live.url, timeout=20) as http:
        assert http.get("/api/v1/jobs", headers=viewer).status_code == 200
        assert http.get(f"/api/v1/jobs/{job.id}", headers=viewer).status_code == 200
        before, _ = _state(app)
        for action in ("cancel", "approve", "reject"):
            assert http.post(f"/api/v1/jobs/{job.id}/{action}",
                             headers=viewer).status_code == 403
        assert http.post("/api/v1/endpoints/churn/retrain", headers=viewer
                         ).status_code == 403
        assert _state(app)[0] == before
        # A deployer of the endpoint may ask for its retrain (the one already active comes
        # back: one job per endpoint); acting on a job by id needs a global grant.
        asked = http.post("/api/v1/endpoints/churn/retrain", headers=scoped)
        assert asked.status_code == 200 and asked.json()["job"]["id"] == job.id
        assert http.post(f"/api/v1/jobs/{job.id}/cancel", headers=scoped).status_code == 403
        assert http.post(f"/api/v1/jobs/{job.id}/cancel", headers=deployer).status_code == 200


@pytest.mark.parametrize("method,path,kwargs,status,field", [
    ("GET", "/api/v1/jobs", {"params": {"state": "sleeping"}}, 400, "state"),
    ("GET", "/api/v1/jobs", {"params": {"endpoint": "no such/name"}}, 400, None),
    ("GET", "/api/v1/jobs", {"params": {"limit": 0}}, 422, "limit"),
    ("GET", "/api/v1/jobs/nope", {}, 404, None),
    ("GET", "/api/v1/jobs/nope/logs", {}, 404, None),
    ("POST", "/api/v1/jobs/nope/cancel", {}, 404, None),
    ("POST", "/api/v1/jobs/nope/approve", {"json": {"reason": "x"}}, 404, None),
    ("POST", "/api/v1/jobs/JOB/approve", {}, 409, None),  # queued, not waiting
    ("POST", "/api/v1/jobs/JOB/reject", {"json": {"reason": 5}}, 422, "reason"),
    ("POST", "/api/v1/jobs/JOB/approve", {"json": {"reason": "x" * 2001}}, 422, "reason"),
    ("POST", "/api/v1/jobs/JOB/cancel", {"json": {"why": "x"}}, 422, "why"),
    ("POST", "/api/v1/jobs/JOB/cancel", {"content": b"{not json",
                                          "headers": {"content-type": "application/json"}},
     422, None),
    ("POST", "/api/v1/endpoints/nope/retrain", {"json": {}}, 404, None),
    ("POST", "/api/v1/endpoints/churn/retrain", {"json": {"reason": ["x"]}}, 422, "reason"),
    ("POST", "/api/v1/endpoints/churn/retrain", {"json": {"reason": "x" * 2001}}, 422,
     "reason"),
])
def test_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(
        simple: tuple[Any, Any], method: str, path: str, kwargs: dict[str, Any], status: int,
        field: str | None) -> None:
    live, app = simple
    admin = _key(app, "admin")
    job, _ = _review_runner(app).submit("review", "churn", {}, actor="test")
    before = _state(app)
    headers = {**admin, **kwargs.pop("headers", {})}
    with httpx.Client(base_url=live.url, timeout=20) as http:
        answer = http.request(method, path.replace("JOB", job.id), headers=headers, **kwargs)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["message"]
    if field is not None:
        details = error.get("details") or {}
        # Validation answers list problems by field; mlharbor errors carry one field.
        fields = ([d.get("field") for d in details] if isinstance(details, list)
                  else [details.get("field")])
        assert field in fields, error
    assert _state(app) == before  # no job, no step, no audit record changed
