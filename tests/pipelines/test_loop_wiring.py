"""The composition root wires the closed loop: one set of control-plane services whose job
runner builds each retrain job from the policy revision in its request, rolls out with the real
endpoint service and prediction-log signals, names the job in the ledger, and tells the alert
webhooks what became of the job, from one place (the runner's hook)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mlharbor.bootstrap import ControlPlaneServices, build_control_plane
from mlharbor.core.loop import RetrainTrigger
from mlharbor.pipelines.jobs import JobState, StepState
from mlharbor.pipelines.jobview import job_outcome, job_view, read_job_log
from mlharbor.pipelines.submit import submit_retrain
from mlharbor.registry.endpoints import EndpointService
from mlharbor.settings import Settings
from tests.pipelines.loophome import apply_policy, build_champion_home, copy_home, fast_policy
from tests.support import LiveServer


@pytest.fixture(scope="module")
def base_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_champion_home(tmp_path_factory.mktemp("loop-wiring"))


class Receiver:
    """A webhook receiver on loopback keeping every JSON body it is sent."""

    def __init__(self) -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        self.bodies: list[dict[str, Any]] = []

        async def hook(request: Request) -> JSONResponse:
            self.bodies.append(await request.json())
            return JSONResponse({"ok": True})

        self.app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()
    with LiveServer(rec.app) as live:
        yield rec, f"{live.url}/hook"


@pytest.fixture
def services(base_home: Path, tmp_path: Path, receiver: tuple[Receiver, str]
             ) -> Iterator[ControlPlaneServices]:
    home = copy_home(base_home, tmp_path / "home")
    settings = Settings(home=home, training={"n_jobs": 1},
                        monitoring={"webhooks": [receiver[1]], "default_alert_rules": False},
                        pipelines={"job_poll_s": 0.1, "trigger_interval_s": 3600})
    built = build_control_plane(settings, owner="wiring-test")
    yield built
    built.close()


def test_a_retrain_runs_under_the_policy_revision_it_was_submitted_with(
        services: ControlPlaneServices, receiver: tuple[Receiver, str]) -> None:
    registry = services.registry
    first = apply_policy(registry, fast_policy())
    job, created = submit_retrain(registry, "churn", trigger=RetrainTrigger.MANUAL,
                                  reason="wiring test", actor="tester")
    assert created and job.request["policy_revision"] == first
    assert job.plan == ("snapshot", "train", "validate", "canary-100", "promote")
    # The policy changes while the job is queued: an approval step and more canary steps.
    changed = fast_policy(approval=True).replace("steps: [100]", "steps: [50, 100]")
    assert apply_policy(registry, changed) == first + 1

    done = services.runner.run_once()
    assert done is not None and done.id == job.id
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.plan == job.plan  # the job's own revision, not the one applied after it
    assert [s.state for s in done.steps] == [StepState.SUCCEEDED] * 5
    assert job_outcome(done) == "promoted"

    # The champion alias moved to the challenger; the ledger names the job in every move.
    assert registry.get_version("churn@champion").version == 2
    moves = [m for m in registry.alias_history("churn") if m.to_version == 2]
    assert {m.alias for m in moves} == {"challenger", "champion"}
    assert all(job.id in (m.reason or "") for m in moves)
    assert next(m for m in moves if m.alias == "champion").actor == f"job:{job.id}"
    changes = EndpointService(registry).history("churn")[1:]
    assert changes and all(h.actor == f"job:{job.id}" and f"rollout {job.id}" in h.reason
                           for h in changes)
    final = EndpointService(registry).get("churn").spec
    assert [(r.ref, r.weight) for r in final.routes] == [("churn@champion", 100.0)]

    # What people see: the view's timeline and decisions, the log's steps and changes.
    view = job_view(done)
    assert [t["step"] for t in view["timeline"]] == list(job.plan)
    assert all(t["seconds"] is not None and t["seconds"] >= 0 for t in view["timeline"])
    assert [d["verdict"] for d in view["decisions"]] == ["advance", "promote"]
    log = read_job_log(registry.store, done)
    events = [(e.step, e.event) for e in log]
    assert (None, "submit") in events and ("promote", "step.succeeded") in events
    assert any(e.step == "train" and e.event == "change" and "version" in e.message
               for e in log), events
    assert any(e.step == "promote" and e.event == "change" and "alias" in e.message
               for e in log), events
    assert [e.at for e in log] == sorted(e.at for e in log)

    # The webhooks heard the job start and its promotion, once each, from the runner.
    rec, _url = receiver
    heard = [(b["event"], b["job_id"]) for b in rec.bodies]
    assert heard == [("started", job.id), ("promoted", job.id)]
    assert "wiring test" in rec.bodies[0]["summary"]


def test_a_job_whose_steps_cannot_be_built_fails_cleanly_and_is_reported(
        services: ControlPlaneServices, receiver: tuple[Receiver, str]) -> None:
    registry = services.registry
    apply_policy(registry, fast_policy())
    request = {"endpoint": "churn", "trigger": "manual", "reason": "bad revision",
               "base_ref": None, "requested_by": "tester",
               "at": datetime.now(UTC).isoformat(), "policy_revision": 99}
    job, created = services.jobs.submit("retrain", "churn", request,
                                        ("snapshot", "train", "validate"), actor="tester")
    assert created
    done = services.runner.run_once()
    assert done is not None and done.id == job.id and done.state is JobState.FAILED
    assert done.error is not None and "cannot be built" in done.error
    assert "no revision 99" in done.error
    assert [s.state for s in done.steps] == [StepState.CANCELLED] * 3  # nothing ran
    assert [v.version for v in registry.list_versions("churn").items] == [1]
    rec, _url = receiver
    assert [(b["event"], b["state"]) for b in rec.bodies] == [("started", "resolved"),
                                                             ("failed", "firing")]


def test_one_monitor_serves_the_routes_the_alert_loop_and_the_trigger_loop(
        services: ControlPlaneServices) -> None:
    from mlharbor.api.app import create_app

    app = create_app(services.settings, services=services)
    with LiveServer(app):  # the lifespan starts the loops and stops them at exit
        assert services.triggers is not None
        assert services.triggers.monitor is services.monitor
        runner_thread = services._runner_thread
        assert runner_thread is not None and runner_thread.is_alive()
        assert app.state.registry is services.registry
    assert services.triggers is None and not runner_thread.is_alive()
    assert services._runner_thread is None


def test_run_jobs_off_starts_neither_the_runner_nor_the_triggers(
        base_home: Path, tmp_path: Path) -> None:
    home = copy_home(base_home, tmp_path / "home")
    settings = Settings(home=home, pipelines={"run_jobs": False})
    built = build_control_plane(settings)
    try:
        built.start()
        assert built._runner_thread is None and built.triggers is None
        built.stop()
    finally:
        built.close()
