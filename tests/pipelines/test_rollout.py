"""Rollout steps: canary and promote, roll back under real load, crash-safe weight moves,
approval through the CLI, and bad input to approve/reject.

Champion and challengers are real skops models trained on the demo churn data and registered
once per session; each test copies that home. The fast tests script the traffic figures at the
seam the rollout owns (:class:`RolloutSignals`); the load test reads them from a real serving
process's prediction log and real feedback labels (:class:`LogSignals`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

import mlharbor
from mlharbor.cli.admin import cli_actor
from mlharbor.core.errors import ConflictError
from mlharbor.pipelines.jobs import JobKind, JobRunner, JobState, JobStore, StepState
from mlharbor.pipelines.policy import RolloutSpec
from mlharbor.pipelines.rollout import (
    TAG_JOB,
    TAG_STATUS,
    LogSignals,
    ShadowStats,
    VariantStats,
    rollout_decisions,
    rollout_steps,
)
from mlharbor.registry.endpoints import EndpointService
from mlharbor.registry.service import Registry
from mlharbor.settings import ServingSettings, Settings
from tests.support import VENV_BIN, cli_env, free_port, run_cli

CHURN = Path(mlharbor.__file__).parent / "demo" / "churn.csv"
FEATURES = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "senior"]
CHAMPION, GOOD, BAD = 1, 2, 3


def churn_frame() -> tuple[pd.DataFrame, pd.Series]:
    frame = pd.read_csv(CHURN).dropna(subset=FEATURES).head(2000)
    return frame[FEATURES].astype(float), frame["churn"].astype(int)


@pytest.fixture(scope="session")
def base_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """churn v1 (@champion) and v2: logistic regressions; v3 learnt from flipped labels, so it
    is wrong most of the time on real traffic (a challenger that is worse live)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.bundles import register_model

    x, y = churn_frame()
    home = tmp_path_factory.mktemp("rollout") / "home"
    settings = Settings(home=home)
    registry = open_registry(settings)
    for c, labels in ((1.0, y), (0.5, y), (1.0, 1 - y)):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500))
        register_model(registry, "churn", model.fit(x, labels), settings=settings,
                       sample_input=x.head(20))
    registry.set_alias("churn", "champion", CHAMPION)
    registry.close()
    return home


@pytest.fixture
def home_settings(base_home: Path, tmp_path: Path) -> Settings:
    home = tmp_path / "home"
    shutil.copytree(base_home, home)
    return Settings(home=home, serving=ServingSettings(poll_interval_s=0.2))


@pytest.fixture
def registry(home_settings: Settings) -> Iterator[Registry]:
    from mlharbor.bootstrap import open_registry

    reg = open_registry(home_settings)
    yield reg
    reg.close()


@pytest.fixture
def endpoints(registry: Registry) -> EndpointService:
    service = EndpointService(registry)
    service.create({"name": "churn", "routes": [{"ref": "churn@champion"}]}, actor="test")
    return service


def spec(**overrides: Any) -> RolloutSpec:
    body: dict[str, Any] = {
        "canary": {"steps": [5, 25, 50, 100], "hold": {"requests": 10, "duration": "1s"}},
        "guards": {"error_rate_increase": 0.02, "p99_ratio": 2.0, "accuracy_drop": 0.05,
                   "accuracy_source": "live", "alpha": 0.05}}
    body.update(overrides)
    return RolloutSpec.model_validate(body)


class Scripted:
    """Traffic figures at the rollout's own seam: each call sees more requests and labels,
    as a live endpoint would; ``challenger_accuracy`` sets how right the challenger is."""

    def __init__(self, challenger_accuracy: float = 0.85,
                 on_call: Callable[[int], None] | None = None, agreement: float = 0.97,
                 shadow_errors: int = 0) -> None:
        self.calls = 0
        self.agreement = agreement
        self.shadow_errors = shadow_errors
        self.challenger_accuracy = challenger_accuracy
        self.on_call = on_call

    def variants(self, endpoint: str, start: datetime, end: datetime,
                 versions: tuple[int, int]) -> dict[int, VariantStats]:
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        n = 5 * self.calls
        champion, challenger = versions
        return {
            champion: VariantStats(n, 0, (0.010,) * 30, n, round(0.85 * n)),
            challenger: VariantStats(n, 0, (0.011,) * 30, n,
                                     round(self.challenger_accuracy * n)),
        }

    def shadow(self, endpoint: str, start: datetime, end: datetime,
               shadow_version: int) -> ShadowStats:
        agreeing = round(100 * self.agreement)
        return ShadowStats(100, 100, 100, agreeing, 0.01, 0.012, primary_errors=1,
                           shadow_errors=self.shadow_errors)


def make_runner(registry: Registry, rollout: RolloutSpec, signals: Any, *,
                endpoints: EndpointService | None = None, lease_seconds: float = 30.0,
                ) -> JobRunner:
    steps = rollout_steps(rollout, registry=registry, signals=signals, endpoints=endpoints,
                          poll_seconds=0.05)
    return JobRunner(JobStore(registry.store), [JobKind("rollout", tuple(steps))],
                     lease_seconds=lease_seconds, poll_seconds=0.1)


def submit(runner: JobRunner, challenger: int = GOOD) -> str:
    job, created = runner.submit("rollout", "churn", {"model": "churn",
                                                      "challenger": challenger}, actor="test")
    assert created
    return job.id


def challenger_weights(spec_body: dict[str, Any] | None, challenger: int) -> float:
    """The challenger's share (percent) of an endpoint spec's routes."""
    assert spec_body is not None
    total = sum(r["weight"] for r in spec_body["routes"])
    mine = sum(r["weight"] for r in spec_body["routes"] if r["ref"] == f"churn:{challenger}")
    return float(100.0 * mine / total)


def test_a_good_challenger_is_canaried_and_promoted(registry: Registry,
                                                    endpoints: EndpointService) -> None:
    runner = make_runner(registry, spec(), Scripted())
    job_id = submit(runner)
    job = runner.run_once()
    assert job is not None and job.state is JobState.SUCCEEDED, job and job.error
    assert job.plan == ("canary-5", "canary-25", "canary-50", "canary-100", "promote")

    # The alias moved, all traffic to it, and the ledger names the job.
    assert registry.get_version("churn@champion").version == GOOD
    final = endpoints.get("churn").spec
    assert [(r.ref, r.weight) for r in final.routes] == [("churn@champion", 100.0)]
    move = registry.alias_history("churn", "champion")[-1]
    assert (move.from_version, move.to_version) == (CHAMPION, GOOD)
    assert job_id in move.reason and move.actor == f"job:{job_id}"
    history = endpoints.history("churn")[1:]  # after the create
    assert [challenger_weights(h.spec, GOOD) for h in history] == [5, 25, 50, 100, 0]
    assert all(job_id in h.reason and h.actor == f"job:{job_id}" for h in history)
    # During the canary the champion answers whatever the challenger fails.
    assert history[0].spec is not None and history[0].spec["fallback"] == ["churn:1"]
    assert history[-1].spec is not None and history[-1].spec["fallback"] == []
    assert registry.get_version("churn:2").tags[TAG_STATUS] == "promoted"

    # One RolloutDecision per step, stored as its result; the accuracy test looked each step.
    decisions = rollout_decisions([s.result for s in job.steps])
    assert [d.verdict.value for d in decisions] == ["advance"] * 4 + ["promote"]
    assert [d.weights for d in decisions[:2]] == [{"churn:1": 95, "churn:2": 5},
                                                  {"churn:1": 75, "churn:2": 25}]
    looks = [d.test for d in decisions if d.test is not None]
    assert [t.look for t in looks] == [1, 2, 3, 4]
    assert all(t.verdict.value == "continue" for t in looks)
    assert decisions[0].guard_metrics["challenger_accuracy"] == pytest.approx(0.85, abs=0.02)


def test_a_challenger_worse_on_labels_is_rolled_back_and_tagged(
        registry: Registry, endpoints: EndpointService) -> None:
    runner = make_runner(registry, spec(), Scripted(challenger_accuracy=0.30))
    job_id = submit(runner, BAD)
    job = runner.run_once()
    assert job is not None and job.state is JobState.FAILED
    assert "Rolled back" in (job.error or "") and "accuracy" in (job.error or "")
    assert registry.get_version("churn@champion").version == CHAMPION
    assert [(r.ref, r.weight) for r in endpoints.get("churn").spec.routes] == [
        ("churn@champion", 100.0)]
    failed = next(s for s in job.steps if s.state is StepState.FAILED)
    (decision,) = rollout_decisions([failed.result])
    assert decision.verdict.value == "rollback" and decision.test is not None
    assert decision.test.verdict.value == "challenger_worse"
    tags = registry.get_version(f"churn:{BAD}").tags
    assert tags[TAG_STATUS] == "rejected" and tags[TAG_JOB] == job_id
    # The same marker validation writes: one tag says a version was rejected, and why.
    from mlharbor.pipelines.retrain import VERDICT_TAG

    assert TAG_STATUS == VERDICT_TAG
    assert job_id in endpoints.history("churn")[-1].reason


@pytest.mark.parametrize("agreement", [0.97, 0.5], ids=["agrees", "disagrees"])
def test_the_shadow_phase_mirrors_then_restores_and_judges_agreement(
        registry: Registry, endpoints: EndpointService, agreement: float) -> None:
    rollout = spec(shadow={"requests": 50, "duration": "1s", "min_agreement": 0.9})
    runner = make_runner(registry, rollout, Scripted(agreement=agreement))
    job_id = submit(runner)
    job = runner.run_once()
    assert job is not None and job.plan[0] == "shadow"
    history = endpoints.history("churn")[1:]
    # The challenger was the shadow, then the endpoint's own shadow (none) came back.
    assert [h.spec["shadow"] for h in history[:2] if h.spec] == ["churn:2", None]
    assert all(job_id in h.reason for h in history)
    (decision, *_rest) = rollout_decisions([s.result for s in job.steps if s.result])
    assert decision.phase.value == "shadow"
    assert decision.guard_metrics["agreement"] == pytest.approx(agreement)
    if agreement >= 0.9:
        assert job.state is JobState.SUCCEEDED, job.error
        assert registry.get_version("churn@champion").version == GOOD
    else:
        assert job.state is JobState.FAILED and "agreement 0.500" in (job.error or "")
        assert decision.verdict.value == "rollback" and len(history) == 2  # no canary
        assert registry.get_version("churn:2").tags[TAG_STATUS] == "rejected"
        assert registry.get_version("churn@champion").version == CHAMPION


@pytest.mark.parametrize("failed", [2, 25], ids=["as-often-as-the-primary", "failing"])
def test_the_shadow_phase_judges_the_shadows_error_rate(
        registry: Registry, endpoints: EndpointService, failed: int) -> None:
    """100 answered copies and ``failed`` failed ones vs 1 fallback in 101 primary requests:
    the canary's one-sided error-rate test (allowed increase 0.02, alpha 0.05) fires at 25
    failed copies (20 %), not at 2 (2 %)."""
    rollout = spec(shadow={"requests": 50, "duration": "1s", "min_agreement": 0.9})
    runner = make_runner(registry, rollout, Scripted(shadow_errors=failed))
    submit(runner)
    job = runner.run_once()
    assert job is not None
    (decision, *_rest) = rollout_decisions([s.result for s in job.steps if s.result])
    assert decision.phase.value == "shadow"
    assert decision.guard_metrics["shadow_errors"] == failed
    assert decision.guard_metrics["shadow_error_rate"] == pytest.approx(failed / (100 + failed))
    assert decision.guard_metrics["primary_error_rate"] == pytest.approx(1 / 101)
    if failed == 2:
        assert job.state is JobState.SUCCEEDED, job.error
        assert f"{failed} of {100 + failed} copies failed" in decision.reason
        assert registry.get_version("churn@champion").version == GOOD
    else:
        assert job.state is JobState.FAILED and "error rate" in (job.error or "")
        assert decision.verdict.value == "rollback" and "shadow error rate" in decision.reason
        history = endpoints.history("churn")[1:]
        assert [h.spec["shadow"] for h in history if h.spec] == ["churn:2", None]  # restored
        assert registry.get_version("churn:2").tags[TAG_STATUS] == "rejected"
        assert registry.get_version("churn@champion").version == CHAMPION


class Crash(BaseException):
    """A runner dying mid-step (SIGKILL): nothing after it runs, no handler sees it."""


class CrashingEndpoints(EndpointService):
    """Dies once around the update whose reason names ``when``: after it committed (before
    the step could note it) or before it was sent."""

    def __init__(self, registry: Registry, when: str, after: bool) -> None:
        super().__init__(registry)
        self.when, self.after, self.armed = when, after, True

    def update(self, name: str, changes: dict[str, Any], **kwargs: Any) -> Any:
        hit = self.armed and self.when in kwargs.get("reason", "")
        if hit and not self.after:
            self.armed = False
            raise Crash
        result = super().update(name, changes, **kwargs)
        if hit:
            self.armed = False
            raise Crash
        return result


@pytest.mark.parametrize("after", [True, False], ids=["after-commit", "before-commit"])
def test_a_weight_move_interrupted_by_a_crash_is_finished_once_on_rerun(
        registry: Registry, endpoints: EndpointService, after: bool) -> None:
    crashing = CrashingEndpoints(registry, "canary step 2/4", after)
    first = make_runner(registry, spec(), Scripted(), endpoints=crashing, lease_seconds=0.5)
    job_id = submit(first)
    with pytest.raises(Crash):
        first.run_once()
    store = JobStore(registry.store)
    held = store.get(job_id)
    assert held.state is JobState.RUNNING and held.steps[1].state is StepState.RUNNING
    # Whatever the crash left, the routes are one whole step's, never something in between.
    assert challenger_weights(endpoints.get("churn").spec.model_dump(), GOOD) == (
        25 if after else 5)

    time.sleep(0.6)  # the dead runner's lease runs out
    second = make_runner(registry, spec(), Scripted())
    job = second.run_once()
    assert job is not None and job.state is JobState.SUCCEEDED, job and job.error
    assert job.steps[1].attempts == 2
    history = endpoints.history("churn")[1:]
    # Each weight move happened exactly once: the re-run saw its move done (or did it).
    assert [challenger_weights(h.spec, GOOD) for h in history] == [5, 25, 50, 100, 0]
    assert registry.get_version("churn@champion").version == GOOD


def test_a_human_edit_during_the_canary_stops_the_rollout_not_overwritten(
        registry: Registry, endpoints: EndpointService) -> None:
    edited: list[int] = []

    def human(call: int) -> None:
        current = endpoints.get("churn")
        if not edited and challenger_weights(current.spec.model_dump(), GOOD) == 25:
            endpoints.update("churn", {"description": "hands on"}, actor="alice",
                             expected_revision=current.revision)
            edited.append(current.revision + 1)

    runner = make_runner(registry, spec(), Scripted(on_call=human))
    submit(runner)
    job = runner.run_once()
    assert job is not None and job.state is JobState.FAILED
    assert "changed by someone else" in (job.error or "")
    after = endpoints.get("churn")
    assert after.revision == edited[0] and after.spec.description == "hands on"
    assert challenger_weights(after.spec.model_dump(), GOOD) == 25  # not moved on, not reset
    assert registry.get_version("churn@champion").version == CHAMPION


def _audit(registry: Registry) -> list[Any]:
    return list(registry.store.iter_audit())


def test_approval_waits_without_a_runner_then_approve_continues_it(
        registry: Registry, endpoints: EndpointService, home_settings: Settings) -> None:
    runner = make_runner(registry, spec(approval=True), Scripted())
    job_id = submit(runner)
    waiting = runner.run_once()
    assert waiting is not None and waiting.state is JobState.WAITING
    assert waiting.lease_owner is None  # no runner holds it while a human decides
    assert [s.state for s in waiting.steps][:2] == [StepState.WAITING, StepState.PENDING]
    assert endpoints.get("churn").revision == 1  # weights untouched
    assert runner.run_once() is None  # nothing to claim: it waits
    # Still the endpoint's one job: a second submit returns it.
    again, created = runner.submit("rollout", "churn", {"model": "churn", "challenger": GOOD},
                                   actor="test")
    assert not created and again.id == job_id

    approved = run_cli("jobs", "approve", job_id, "--reason", "reviewed the shadow report",
                       env=cli_env(home_settings))
    assert approved.returncode == 0, approved.stderr
    assert JobStore(registry.store).get(job_id).state is JobState.QUEUED
    event = _audit(registry)[-1]
    assert (event.action, event.actor, event.details["reason"]) == (
        "job.approve", cli_actor(), "reviewed the shadow report")  # who approved: the user

    job = runner.run_once()
    assert job is not None and job.state is JobState.SUCCEEDED, job and job.error
    assert job.steps[0].result["approval"]["reason"] == "reviewed the shadow report"
    assert registry.get_version("churn@champion").version == GOOD


def test_reject_ends_the_waiting_job_with_weights_untouched(
        registry: Registry, endpoints: EndpointService, home_settings: Settings) -> None:
    runner = make_runner(registry, spec(approval=True), Scripted())
    job_id = submit(runner)
    runner.run_once()
    rejected = run_cli("jobs", "reject", job_id, "--reason", "not this quarter",
                       env=cli_env(home_settings))
    assert rejected.returncode == 0, rejected.stderr
    job = JobStore(registry.store).get(job_id)
    assert job.state is JobState.FAILED and "not this quarter" in (job.error or "")
    assert job.steps[0].state is StepState.FAILED
    assert {s.state for s in job.steps[1:]} == {StepState.CANCELLED}
    assert runner.run_once() is None
    assert endpoints.get("churn").revision == 1 and len(endpoints.history("churn")) == 1
    assert registry.get_version("churn@champion").version == CHAMPION
    event = _audit(registry)[-1]
    assert (event.action, event.details["reason"]) == ("job.reject", "not this quarter")


def assert_cancelled_and_restored(registry: Registry, endpoints: EndpointService,
                                  job_id: str, *, revision_before: int) -> None:
    """The job ended cancelled, the endpoint is as before the rollout, the challenger rejected
    with the reason "cancelled" by this job, the decision stored on the cancelled step."""
    from mlharbor.pipelines.rollout import CANCELLED, TAG_REASON

    job = JobStore(registry.store).get(job_id)
    assert job.state is JobState.CANCELLED and job.error is None, job.error
    assert job.lease_owner is None
    now = endpoints.get("churn")
    assert [(r.ref, r.weight) for r in now.spec.routes] == [("churn@champion", 100.0)]
    assert now.spec.fallback == [] and now.spec.shadow is None
    assert registry.get_version("churn@champion").version == CHAMPION
    tags = registry.get_version(f"churn:{GOOD}").tags
    assert (tags[TAG_STATUS], tags[TAG_REASON], tags[TAG_JOB]) == ("rejected", CANCELLED,
                                                                  job_id)
    cancelled = [s for s in job.steps if s.result and s.state is StepState.CANCELLED]
    assert len(cancelled) == 1, [(s.name, s.state) for s in job.steps]
    (decision,) = rollout_decisions([cancelled[0].result])
    assert (decision.verdict.value, decision.reason) == ("rollback", CANCELLED)
    assert decision.weights == {"churn:1": 100}
    moved = endpoints.history("churn")
    if now.revision != revision_before:  # a move put it back, named after the job
        assert moved[-1].actor == f"job:{job_id}" and "cancelled" in moved[-1].reason


def test_a_waiting_job_cancelled_is_ended_by_the_next_runner_which_rejects_the_challenger(
        registry: Registry, endpoints: EndpointService) -> None:
    runner = make_runner(registry, spec(approval=True), Scripted())
    job_id = submit(runner)
    runner.run_once()
    job = JobStore(registry.store).cancel(job_id, actor="test", reason="not this one")
    # It ran, so a runner ends it (its steps undo what they started); it still holds the
    # endpoint and cannot be approved any more.
    assert job.state is JobState.QUEUED and job.cancel_requested
    with pytest.raises(ConflictError, match="not waiting"):
        JobStore(registry.store).approve(job_id, actor="test")
    again, created = runner.submit("rollout", "churn", {"model": "churn", "challenger": GOOD},
                                   actor="test")
    assert not created and again.id == job_id

    ended = runner.run_once()
    assert ended is not None and ended.id == job_id
    assert_cancelled_and_restored(registry, endpoints, job_id, revision_before=1)
    assert endpoints.get("churn").revision == 1  # nothing had moved: nothing moved back
    assert ended.steps[0].name == "approval" and ended.steps[0].state is StepState.CANCELLED
    assert runner.run_once() is None


def test_a_never_claimed_job_is_cancelled_at_once(registry: Registry,
                                                  endpoints: EndpointService) -> None:
    runner = make_runner(registry, spec(approval=True), Scripted())
    job_id = submit(runner)
    job = JobStore(registry.store).cancel(job_id, actor="test")
    assert job.state is JobState.CANCELLED
    assert {s.state for s in job.steps} == {StepState.CANCELLED}
    assert runner.run_once() is None and endpoints.get("churn").revision == 1
    assert TAG_STATUS not in registry.get_version(f"churn:{GOOD}").tags  # nothing started


class CancelAt(Scripted):
    """Cancels the job the first time the endpoint sends ``percent`` % to the challenger,
    then reports no more challenger traffic, so that hold can only end by the cancel."""

    def __init__(self, registry: Registry, endpoints: EndpointService, percent: int) -> None:
        super().__init__()
        self.registry, self.endpoints, self.percent = registry, endpoints, percent
        self.cancelled = False

    def variants(self, endpoint: str, start: datetime, end: datetime,
                 versions: tuple[int, int]) -> dict[int, VariantStats]:
        stats = super().variants(endpoint, start, end, versions)
        spec_body = self.endpoints.get("churn").spec.model_dump()
        if not self.cancelled and challenger_weights(spec_body, GOOD) == self.percent:
            store = JobStore(self.registry.store)
            (job,) = store.list_jobs(endpoint="churn")
            store.cancel(job.id, actor="test", reason="stop it")
            self.cancelled = True
        if self.cancelled:
            stats[versions[1]] = VariantStats(0, 0, (), 0, 0)
        return stats


def test_cancel_during_a_canary_hold_restores_the_endpoint_and_rejects_the_challenger(
        registry: Registry, endpoints: EndpointService) -> None:
    before = endpoints.get("churn").revision
    signals = CancelAt(registry, endpoints, 25)
    runner = make_runner(registry, spec(), signals, lease_seconds=0.6)
    job_id = submit(runner)
    job = runner.run_once()
    assert job is not None and signals.cancelled
    assert_cancelled_and_restored(registry, endpoints, job_id, revision_before=before)
    assert [s.state for s in job.steps] == [StepState.SUCCEEDED, StepState.CANCELLED,
                                           StepState.CANCELLED, StepState.CANCELLED,
                                           StepState.CANCELLED]
    history = endpoints.history("churn")[1:]
    assert [challenger_weights(h.spec, GOOD) for h in history] == [5, 25, 0]
    assert history[-1].spec is not None and history[-1].spec["fallback"] == []


def test_cancel_of_a_job_whose_runner_died_mid_canary_is_undone_by_the_next_runner(
        registry: Registry, endpoints: EndpointService) -> None:
    crashing = CrashingEndpoints(registry, "canary step 2/4", True)
    first = make_runner(registry, spec(), Scripted(), endpoints=crashing, lease_seconds=0.5)
    job_id = submit(first)
    with pytest.raises(Crash):
        first.run_once()
    store = JobStore(registry.store)
    held = store.cancel(job_id, actor="test")  # running (a dead runner): marked only
    assert held.state is JobState.RUNNING and held.cancel_requested
    assert challenger_weights(endpoints.get("churn").spec.model_dump(), GOOD) == 25

    second = make_runner(registry, spec(), Scripted())
    deadline = time.monotonic() + 30
    job = None
    while job is None:  # claimable once the dead runner's lease has run out
        assert time.monotonic() < deadline, "the second runner never claimed the job"
        job = second.run_once()
        time.sleep(0.1)
    assert job.id == job_id
    assert_cancelled_and_restored(registry, endpoints, job_id, revision_before=0)
    assert job.steps[1].attempts == 2 and job.steps[1].state is StepState.CANCELLED
    history = endpoints.history("churn")[1:]
    assert [challenger_weights(h.spec, GOOD) for h in history] == [5, 25, 0]


def test_cancel_after_a_promote_died_past_its_alias_move_moves_the_alias_back(
        registry: Registry, endpoints: EndpointService) -> None:
    """The promote's alias move committed, its runner died before the routes moved, then the
    job was cancelled: the next runner moves the alias back (this job moved it) and restores
    the routes, so the cancelled job leaves no promotion behind."""
    crashing = CrashingEndpoints(registry, "promoted after", False)
    one_step = spec(canary={"steps": [100], "hold": {"requests": 0, "duration": "1s"}})
    first = make_runner(registry, one_step, Scripted(), endpoints=crashing, lease_seconds=0.5)
    job_id = submit(first)
    with pytest.raises(Crash):
        first.run_once()
    assert registry.get_version("churn@champion").version == GOOD  # the alias had moved
    JobStore(registry.store).cancel(job_id, actor="test")

    second = make_runner(registry, one_step, Scripted())
    deadline = time.monotonic() + 30
    job = None
    while job is None:
        assert time.monotonic() < deadline, "the second runner never claimed the job"
        job = second.run_once()
        time.sleep(0.1)
    assert_cancelled_and_restored(registry, endpoints, job_id, revision_before=0)
    moves = registry.alias_history("churn", "champion")[-2:]
    assert [(m.from_version, m.to_version, m.actor) for m in moves] == [
        (CHAMPION, GOOD, f"job:{job_id}"), (GOOD, CHAMPION, f"job:{job_id}")]
    assert "cancelled" in moves[-1].reason


def test_cancel_between_steps_restores_before_the_next_step_moves_anything(
        registry: Registry, endpoints: EndpointService) -> None:
    """The cancel lands after canary-5 finished and before canary-25 starts: the runner runs
    canary-25's undo instead of the step."""
    store = JobStore(registry.store)

    class CancelAfterFirst(Scripted):
        def variants(self, endpoint: str, start: datetime, end: datetime,
                     versions: tuple[int, int]) -> dict[int, VariantStats]:
            stats = super().variants(endpoint, start, end, versions)
            spec_body = endpoints.get("churn").spec.model_dump()
            if challenger_weights(spec_body, GOOD) == 5 and self.calls > 3:
                (job,) = store.list_jobs(endpoint="churn")
                if not job.cancel_requested:
                    store.cancel(job.id, actor="test")
            return stats

    runner = make_runner(registry, spec(), CancelAfterFirst())  # 30 s lease: no heartbeat
    job_id = submit(runner)
    job = runner.run_once()
    assert job is not None
    assert [s.state for s in job.steps][:2] == [StepState.SUCCEEDED, StepState.CANCELLED]
    assert_cancelled_and_restored(registry, endpoints, job_id, revision_before=0)
    history = endpoints.history("churn")[1:]
    assert [challenger_weights(h.spec, GOOD) for h in history] == [5, 0]


def test_approve_and_reject_refuse_bad_input_in_one_line_writing_nothing(
        registry: Registry, endpoints: EndpointService, home_settings: Settings) -> None:
    runner = make_runner(registry, spec(approval=True), Scripted())
    job_id = submit(runner)  # queued, not waiting
    env = cli_env(home_settings)
    before = len(_audit(registry))
    for args, code in ((("jobs", "approve", "0" * 32), 3), (("jobs", "reject", "nope"), 3),
                       (("jobs", "approve", job_id), 4), (("jobs", "reject", job_id), 4)):
        result = run_cli(*args, "--reason", "x", env=env)
        assert result.returncode == code, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(_audit(registry)) == before
    assert JobStore(registry.store).get(job_id).state is JobState.QUEUED
    with pytest.raises(ConflictError):
        JobStore(registry.store).approve(job_id, actor="test")


def test_a_waiting_job_holds_its_endpoint_in_the_database(db_settings: Settings) -> None:
    """Migration 0007: the partial unique index counts waiting jobs, so no second job can be
    inserted for an endpoint whose job waits for an approval (on SQLite and PostgreSQL)."""
    from sqlalchemy import insert, update

    from mlharbor.core.clock import utcnow
    from mlharbor.registry.schema import jobs as jobs_table

    reg = Registry.from_settings(db_settings)
    try:
        store = JobStore(reg.store)
        job, _ = store.submit("rollout", "churn", {}, ["approval"], actor="test")
        with reg.store.db.write() as conn:
            conn.execute(update(jobs_table).where(jobs_table.c.id == job.id).values(
                state="waiting"))
        now = utcnow()
        with pytest.raises(ConflictError), reg.store.db.write() as conn:
            conn.execute(insert(jobs_table).values(
                id="b" * 32, state="queued", kind="rollout", endpoint="churn", request={},
                plan=[], created_by="x", created_at=now, updated_at=now, attempt=0,
                cancel_requested=False))
        again, created = store.submit("rollout", "churn", {}, ["approval"], actor="test")
        assert not created and again.id == job.id
    finally:
        reg.close()


# -- under real load: a serving process, clients for the whole rollout, real feedback ---------

@pytest.fixture
def live_server(home_settings: Settings, registry: Registry,
                endpoints: EndpointService) -> Iterator[tuple[str, dict[str, str]]]:
    """``mlharbor serve`` as a process; its reconciler re-reads the endpoint every 0.2 s and
    its prediction log reaches Parquet every 0.5 s."""
    from mlharbor.bootstrap import open_identities

    key = open_identities(registry).init_admin("ops", actor="test")[1]
    port = free_port()
    env = {**os.environ, **cli_env(home_settings),
           "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0",
           "MLHARBOR_SERVING__POLL_INTERVAL_S": "0.2",
           "MLHARBOR_MONITORING__SEGMENT_INTERVAL_S": "0.5",
           "MLHARBOR_MONITORING__FLUSH_INTERVAL_S": "0.2"}
    proc = subprocess.Popen([str(VENV_BIN / "mlharbor"), "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlharbor serve did not become ready"
            time.sleep(0.2)
        yield url, {"Authorization": f"Bearer {key}"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Clients:
    """Threads that predict batches of real churn rows back to back and send each batch's
    true labels through the feedback API, keeping every status code."""

    def __init__(self, url: str, headers: dict[str, str], threads: int = 2) -> None:
        self.url, self.headers = url, headers
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.feedback: list[int] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(threads)]

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, n: int) -> None:
        x, y = churn_frame()
        i = 100 * n
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as client:
            while not self.stop.is_set():
                rows, labels = x.iloc[i:i + 10], y.iloc[i:i + 10]
                i = (i + 10) % (len(x) - 10)
                try:
                    answer = client.post("/v1/endpoints/churn/predict",
                                         json=rows.to_dict(orient="records"))
                except httpx.HTTPError as exc:  # a refused connection is a failed request too
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.statuses.append(answer.status_code)
                if answer.status_code != 200:
                    self.failures.append(answer.text[:300])
                    continue
                rid = answer.json()["request_id"]
                sent = client.post("/v1/endpoints/churn/feedback", json={"labels": [
                    {"request_id": rid, "row": k, "label": int(v)}
                    for k, v in enumerate(labels)]})
                self.feedback.append(sent.status_code)


@pytest.mark.slow
def test_a_challenger_worse_live_is_rolled_back_under_load_with_no_failed_request(
        home_settings: Settings, registry: Registry, endpoints: EndpointService,
        live_server: tuple[str, dict[str, str]]) -> None:
    """churn:3 passes for a model (it was registered like any other) but answers the opposite
    of the truth: on the canary's live traffic its feedback accuracy collapses, the sequential
    test calls it worse and the rollout puts the weights back, while two clients keep sending
    requests from before the first move to after the rollback, and every one is answered."""
    from mlharbor.monitoring.feedback import open_feedback
    from mlharbor.monitoring.service import open_prediction_log

    url, headers = live_server
    reader = home_settings.model_copy(update={"monitoring": home_settings.monitoring.model_copy(
        update={"compaction": "thread"})})
    log = open_prediction_log(reader)
    signals = LogSignals(log, open_feedback(reader, log, registry))
    rollout = spec(canary={"steps": [25, 50, 100], "hold": {"requests": 15, "duration": "3s"}},
                   guards={"error_rate_increase": 0.05, "p99_ratio": 5.0,
                           "accuracy_drop": 0.05, "accuracy_source": "live", "alpha": 0.05})
    runner = make_runner(registry, rollout, signals)
    started = datetime.now().astimezone()
    with Clients(url, headers) as clients:
        time.sleep(1.0)  # traffic before the first move
        job_id = submit(runner, BAD)
        job = runner.run_once()
        time.sleep(1.5)  # and after the rollback, while the servers converge back
    assert clients.failures == [] and clients.statuses, clients.failures[:3]
    assert set(clients.statuses) == {200} and set(clients.feedback) == {200}

    assert job is not None and job.state is JobState.FAILED, job and job.error
    assert "Rolled back" in (job.error or "") and "accuracy" in (job.error or ""), job.error
    (decision,) = rollout_decisions([s.result for s in job.steps if s.result])
    assert decision.verdict.value == "rollback" and decision.test is not None
    assert decision.test.verdict.value == "challenger_worse"
    assert decision.guard_metrics["challenger_accuracy"] < 0.5 < \
        decision.guard_metrics["champion_accuracy"]
    # The canary really served the challenger, and the weights are back where they were.
    seen = signals.variants("churn", started, datetime.now().astimezone(), (CHAMPION, BAD))
    assert seen[BAD].requests > 0 and seen[CHAMPION].requests > seen[BAD].requests
    assert [(r.ref, r.weight) for r in endpoints.get("churn").spec.routes] == [
        ("churn@champion", 100.0)]
    assert endpoints.get("churn").spec.fallback == []
    assert registry.get_version("churn@champion").version == CHAMPION
    assert registry.get_version(f"churn:{BAD}").tags[TAG_STATUS] == "rejected"
    assert all(job_id in h.reason for h in endpoints.history("churn")[1:])
