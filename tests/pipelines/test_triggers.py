"""Trigger evaluation on real parts: a registry and a prediction log in a tmp home, predictions
written through the log's own API with timestamps across windows, labels through feedback, the
job store deciding what was submitted. Every evaluation takes an injected ``now``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sqlalchemy import update

from mlharbor.core.loop import RetrainTrigger
from mlharbor.core.records import PredictionRecord
from mlharbor.data.profile import build_profile
from mlharbor.monitoring.notify import Webhooks
from mlharbor.monitoring.reference import infer_kinds
from mlharbor.monitoring.service import Monitor
from mlharbor.pipelines.jobs import Job, JobState, JobStore
from mlharbor.pipelines.policy import Policy, policy_from_dict
from mlharbor.pipelines.triggers import (
    ACTOR,
    DriftEvidence,
    EstimatedEvidence,
    MetricEvidence,
    ScheduleEvidence,
    TriggerLoop,
    evaluate_triggers,
    grid_end,
)
from mlharbor.registry.endpoints import EndpointService
from mlharbor.registry.policies import PolicyService
from mlharbor.registry.schema import policies
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from tests.monitoring.test_alerts import Receiver

ENDPOINT = "churn"
#: The end of the last complete hour a day ago: windows are laid before it, evaluated after it.
T = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)


class Outputs:  # what serving hands the log: predictions and class probabilities
    def __init__(self, predictions: Any, probabilities: Any) -> None:
        self.predictions, self.probabilities = predictions, probabilities


def features(rng: np.random.Generator, n: int, shifted: bool = False) -> pd.DataFrame:
    frame = pd.DataFrame({"x0": rng.normal(size=n), "x1": rng.normal(10, 3, size=n),
                          "x2": rng.normal(size=n),
                          "plan": rng.choice(list("abc"), n, p=[0.5, 0.3, 0.2])})
    if shifted:  # two of four features move: half the dataset drifts
        frame["x0"] += 1.5
        frame["x1"] += 4.5
    return frame


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def registry(settings: Settings, tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.from_settings(settings)
    reference = features(np.random.default_rng(7), 20_000)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    reg.register_version(ENDPOINT, bundle, lineage={
        "reference_profile": build_profile(reference, infer_kinds(reference))})
    EndpointService(reg).create({"name": ENDPOINT, "routes": [{"ref": f"{ENDPOINT}:1"}]},
                                actor="setup")
    yield reg
    reg.close()


@pytest.fixture
def monitor(settings: Settings, registry: Registry) -> Iterator[Monitor]:
    mon = Monitor(settings, registry)
    yield mon
    mon.log.close()


def log_rows(monitor: Monitor, frame: pd.DataFrame, at: datetime, *, prefix: str,
             predictions: Any = None, probabilities: Any = None, batch: int = 50) -> list[str]:
    """Log ``frame`` as requests of ``batch`` rows spread over the minutes after ``at``."""
    ids = []
    n = len(frame)
    preds = np.zeros(n, dtype=int) if predictions is None else np.asarray(predictions)
    if probabilities is None:  # P(class 1): 0.7 when 1 is predicted, 0.3 otherwise
        positive = 0.3 + 0.4 * preds
        probabilities = np.column_stack([1.0 - positive, positive])
    proba = np.asarray(probabilities)
    for j, lo in enumerate(range(0, n, batch)):
        rid = f"{prefix}-{j}"
        part = frame.iloc[lo:lo + batch]
        monitor.log.emit(PredictionRecord(
            rid, ENDPOINT, f"{ENDPOINT}@champion", 1, part.to_dict(orient="records"),
            Outputs(preds[lo:lo + batch], proba[lo:lo + batch]), 0.01,
            at + timedelta(minutes=j)))
        ids.append(rid)
    monitor.log.flush()
    monitor.log.compact()
    return ids


def label(monitor: Monitor, ids: list[str], labels: Any, batch: int = 50) -> None:
    items = [{"request_id": ids[i // batch], "row": i % batch, "label": int(y)}
             for i, y in enumerate(labels)]
    assert monitor.add_feedback(ENDPOINT, {"labels": items}) == len(items)


def apply(registry: Registry, **spec: Any) -> Policy:
    policy = policy_from_dict({"endpoint": ENDPOINT, **spec})
    PolicyService(registry).apply(policy, actor="tester")
    return policy


def jobs_of(registry: Registry) -> list[Job]:
    return JobStore(registry.store).list_jobs(endpoint=ENDPOINT)


def finish(registry: Registry, job: Job) -> None:
    """The job ends (cancelled here: the cooldown counts whatever the outcome)."""
    JobStore(registry.store).cancel(job.id, actor="tester")


def drift_windows(monitor: Monitor, drifted: set[int]) -> None:
    """Six hourly windows before T, 400 rows each; the ones in ``drifted`` shifted."""
    rng = np.random.default_rng(11)
    for w in range(6):
        start = T - timedelta(hours=6 - w)
        log_rows(monitor, features(rng, 400, shifted=w in drifted), start, prefix=f"w{w}")


DRIFT = {"triggers": {"drift": {"window": "1h", "of": 6, "at_least": 4}, "cooldown": "6h"}}


# -- drift ------------------------------------------------------------------------------------

def test_drift_in_4_of_6_windows_submits_one_job_however_often_and_wherever_evaluated(
        registry: Registry, monitor: Monitor) -> None:
    drift_windows(monitor, {1, 2, 4, 5})
    apply(registry, **DRIFT)
    receiver = Receiver()
    try:
        hooks = Webhooks([receiver.url + "/generic"], [receiver.url + "/slack"],
                         backoff_s=0.01)
        loops = [TriggerLoop(registry, monitor, interval_s=60, notify=hooks),
                 TriggerLoop(registry, monitor, interval_s=60, notify=hooks)]
        now = T + timedelta(minutes=5)
        verdicts = [loops[i % 2].tick(now + timedelta(minutes=i)) for i in range(10)]
    finally:
        receiver.close()

    first = verdicts[0][0]
    (check,) = first.checks
    assert check.fired and check.trigger is RetrainTrigger.DRIFT and first.due
    evidence = check.evidence
    assert isinstance(evidence, DriftEvidence)
    assert (evidence.drifted, evidence.of, evidence.with_rows) == (4, 6, 6)
    assert set(evidence.features) == {"x0", "x1"}
    assert (evidence.start, evidence.end) == (T - timedelta(hours=6), T)
    # Every later pass, on either loop, sees the job and submits nothing.
    assert all(v[0].blocked and not v[0].due for v in verdicts[1:])

    (job,) = jobs_of(registry)
    assert job.state is JobState.QUEUED and job.created_by == ACTOR
    assert job.request["trigger"] == "drift" and job.request["at"] == now.isoformat()
    assert "drift in 4 of the last 6 1h windows" in job.request["reason"]
    assert job.request["policy_revision"] == 1
    assert f"job {job.id} is queued" in (verdicts[1][0].blocked or "")
    # One message per job, through the alert webhooks (generic and Slack).
    assert [path for path, _ in receiver.received] == ["/generic", "/slack"]
    body = receiver.received[0][1]
    assert body["job_id"] == job.id and body["trigger"] == "drift"
    assert body["dedupe_key"] == f"{ENDPOINT}:drift"
    assert body["verdict"]["checks"][0]["evidence"]["drifted"] == 4
    assert job.id in receiver.received[1][1]["text"]


def test_drift_in_3_of_6_windows_does_not_fire(registry: Registry, monitor: Monitor) -> None:
    drift_windows(monitor, {0, 3, 5})
    apply(registry, **DRIFT)
    loop = TriggerLoop(registry, monitor, interval_s=60)
    (verdict,) = loop.tick(T + timedelta(minutes=5))
    (check,) = verdict.checks
    assert isinstance(check.evidence, DriftEvidence)
    assert check.evidence.drifted == 3 and not check.fired and not check.inactive
    assert "drift in 3 of the last 6" in check.reason
    assert not verdict.due and jobs_of(registry) == []


def test_two_loops_at_the_same_moment_create_one_job(registry: Registry,
                                                     monitor: Monitor) -> None:
    drift_windows(monitor, {0, 1, 2, 3, 4, 5})
    apply(registry, **DRIFT)
    now = T + timedelta(minutes=5)
    loops = [TriggerLoop(registry, monitor, interval_s=60) for _ in range(2)]
    for loop in loops:  # warm the drift calibration so both really race on the submit
        assert evaluate_triggers(policy_from_dict({"endpoint": ENDPOINT, **DRIFT}), monitor,
                                 loop.jobs, now).due
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def run(loop: TriggerLoop) -> None:
        barrier.wait()
        results.append(loop.tick(now))

    threads = [threading.Thread(target=run, args=(loop,)) for loop in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2
    (job,) = jobs_of(registry)
    assert job.state is JobState.QUEUED


def test_a_loop_that_evaluated_before_another_loops_job_ended_cancels_its_own(
        registry: Registry, monitor: Monitor) -> None:
    """The cross-process race: B evaluated, A submitted and its job ended, then B submits."""
    drift_windows(monitor, {0, 1, 2, 3, 4, 5})
    policy = apply(registry, **DRIFT)
    a, b = (TriggerLoop(registry, monitor, interval_s=60) for _ in range(2))
    now = T + timedelta(minutes=5)
    stale = evaluate_triggers(policy, monitor, b.jobs, now)
    assert stale.due
    a.tick(now)
    (first,) = jobs_of(registry)
    finish(registry, first)
    assert b.submit(policy, stale) is None
    jobs = jobs_of(registry)
    assert len(jobs) == 2 and all(j.state is JobState.CANCELLED for j in jobs)
    assert jobs[1].id == first.id  # newest first: the late one is the one cancelled


def test_cooldown_blocks_a_second_job_until_it_ends(registry: Registry,
                                                    monitor: Monitor) -> None:
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 300)
    preds = np.where(rng.random(300) < 0.6, truth, 1 - truth)  # 60% right
    ids = log_rows(monitor, features(rng, 300), T - timedelta(hours=5), prefix="m",
                   predictions=preds)
    label(monitor, ids, truth)
    apply(registry, triggers={"metric": {"name": "accuracy", "below": 0.8, "window": "24h",
                                         "min_labels": 200}, "cooldown": "2h"})
    loop = TriggerLoop(registry, monitor, interval_s=60)
    loop.tick(T)
    (job,) = jobs_of(registry)
    finish(registry, job)
    (blocked,) = loop.tick(T + timedelta(minutes=119))
    assert blocked.blocked and blocked.blocked.startswith("cooldown")
    assert blocked.cooldown_until == T + timedelta(hours=2) and blocked.checks == ()
    assert len(jobs_of(registry)) == 1
    # Judged anyway for a dashboard, it still fires; it just may not start a job.
    policy = policy_from_dict(PolicyService(registry).get(ENDPOINT).spec)
    shown = evaluate_triggers(policy, monitor, loop.jobs, T + timedelta(minutes=119),
                              always=True)
    assert shown.fired and not shown.due
    loop.tick(T + timedelta(hours=2))
    assert [j.request["at"] for j in jobs_of(registry)] == [
        (T + timedelta(hours=2)).isoformat(), T.isoformat()]


# -- live metric ------------------------------------------------------------------------------

def test_live_accuracy_below_the_floor_fires_only_with_enough_labels(
        registry: Registry, monitor: Monitor) -> None:
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 2, 300)
    preds = np.where(rng.random(300) < 0.6, truth, 1 - truth)
    ids = log_rows(monitor, features(rng, 300), T - timedelta(hours=5), prefix="m",
                   predictions=preds)
    apply(registry, triggers={"metric": {"name": "accuracy", "below": 0.8, "window": "24h",
                                         "min_labels": 200}})
    loop = TriggerLoop(registry, monitor, interval_s=60)
    label(monitor, ids[:2], truth[:100])  # 100 labelled rows: too few to judge
    (few,) = loop.tick(T)
    (check,) = few.checks
    assert check.inactive and not check.fired and "100 labelled rows" in check.reason
    assert isinstance(check.evidence, MetricEvidence)
    assert check.evidence.value is not None and check.evidence.value < 0.8
    assert jobs_of(registry) == []

    label(monitor, ids, truth)
    (enough,) = loop.tick(T)
    (check,) = enough.checks
    realised = float((preds == truth).mean())
    assert check.fired and isinstance(check.evidence, MetricEvidence)
    assert check.evidence.value == pytest.approx(realised)
    assert check.evidence.labelled_rows == 300 and check.evidence.bound == 0.8
    (job,) = jobs_of(registry)
    assert job.request["trigger"] == "metric_floor"


def test_live_accuracy_above_the_floor_does_not_fire(registry: Registry,
                                                     monitor: Monitor) -> None:
    rng = np.random.default_rng(6)
    truth = rng.integers(0, 2, 300)
    preds = np.where(rng.random(300) < 0.95, truth, 1 - truth)
    ids = log_rows(monitor, features(rng, 300), T - timedelta(hours=5), prefix="m",
                   predictions=preds)
    label(monitor, ids, truth)
    apply(registry, triggers={"metric": {"name": "accuracy", "below": 0.8,
                                         "min_labels": 200}})
    (verdict,) = TriggerLoop(registry, monitor, interval_s=60).tick(T)
    assert not verdict.checks[0].fired and not verdict.checks[0].inactive
    assert jobs_of(registry) == []


# -- estimated (CBPE) -------------------------------------------------------------------------

def concept(rng: np.random.Generator, x: Any) -> Any:
    """The same P(y | x) everywhere (no concept drift, as CBPE assumes)."""
    logit = 2.0 * x[:, 0] + x[:, 1] - 3.0
    return (rng.random(len(x)) < 1.0 / (1.0 + np.exp(-logit))).astype(int)


def log_scored(monitor: Monitor, model: LogisticRegression, x: Any, at: datetime,
               prefix: str) -> list[str]:
    frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1]})
    return log_rows(monitor, frame, at, prefix=prefix, predictions=model.predict(x),
                    probabilities=model.predict_proba(x))


ESTIMATED = {"triggers": {"estimated": {"metric": "accuracy", "below": 0.8, "window": "6h",
                                        "min_rows": 200}}}


def test_cbpe_fires_when_a_covariate_shift_lowers_confidence_not_on_an_a_a_window(
        registry: Registry, monitor: Monitor) -> None:
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(4000, 2))
    model = LogisticRegression().fit(x_train, concept(rng, x_train))
    # The labelled reference: the served version's production rows two days ago.
    x_ref = rng.normal(size=(3000, 2))
    ref_ids = log_scored(monitor, model, x_ref, T - timedelta(days=1), "ref")
    label(monitor, ref_ids, concept(rng, x_ref))
    apply(registry, **ESTIMATED)
    loop = TriggerLoop(registry, monitor, interval_s=60)

    # A/A: fresh rows from the reference's distribution, no labels yet.
    x_same = rng.normal(size=(800, 2))
    log_scored(monitor, model, x_same, T - timedelta(hours=11), "aa")
    (same,) = loop.tick(T - timedelta(hours=6) + timedelta(minutes=30))
    (check,) = same.checks
    assert isinstance(check.evidence, EstimatedEvidence) and not check.fired, check.reason
    assert check.evidence.upper >= 0.8 and check.evidence.rows == 800
    assert check.evidence.reference_rows == 3000
    assert jobs_of(registry) == []

    # Covariate shift towards the decision boundary: the model is less sure, and rightly so.
    x_shift = np.column_stack([rng.normal(1.5, 0.4, 800), rng.normal(0.0, 0.5, 800)])
    y_shift = concept(rng, x_shift)
    log_scored(monitor, model, x_shift, T - timedelta(hours=4), "shift")
    (shifted,) = loop.tick(T)
    (check,) = shifted.checks
    evidence = check.evidence
    assert isinstance(evidence, EstimatedEvidence) and check.fired, check.reason
    realised = float((model.predict(x_shift) == y_shift).mean())
    assert evidence.upper < 0.8 and evidence.lower <= realised <= evidence.upper
    assert evidence.rows == 800 and evidence.calibrator in ("isotonic", "none")
    (job,) = jobs_of(registry)
    assert job.request["trigger"] == "estimated_floor"


def test_cbpe_without_a_labelled_reference_is_inactive_and_says_why(
        registry: Registry, monitor: Monitor) -> None:
    rng = np.random.default_rng(1)
    x_train = rng.normal(size=(2000, 2))
    model = LogisticRegression().fit(x_train, concept(rng, x_train))
    x_ref = rng.normal(size=(100, 2))
    ref_ids = log_scored(monitor, model, x_ref, T - timedelta(days=1), "ref")
    x_shift = np.column_stack([rng.normal(1.5, 0.4, 400), rng.normal(0.0, 0.5, 400)])
    log_scored(monitor, model, x_shift, T - timedelta(hours=4), "shift")
    apply(registry, **ESTIMATED)
    loop = TriggerLoop(registry, monitor, interval_s=60)
    (unlabelled,) = loop.tick(T)
    assert unlabelled.checks[0].inactive and not unlabelled.checks[0].fired
    assert "no labelled production rows of version 1" in unlabelled.checks[0].reason
    label(monitor, ref_ids, concept(rng, x_ref))  # too few labelled rows to check calibration
    (verdict,) = loop.tick(T)
    (check,) = verdict.checks
    assert check.inactive and not check.fired
    assert "refused" in check.reason and "at least 200" in check.reason
    assert jobs_of(registry) == []


# -- schedule ---------------------------------------------------------------------------------

def test_schedule_fires_once_per_due_time(registry: Registry, monitor: Monitor) -> None:
    apply(registry, triggers={"schedule": "0 3 * * *", "cooldown": "1m"})
    applied = PolicyService(registry).get(ENDPOINT).updated_at
    from mlharbor.pipelines.cron import parse_cron

    due = parse_cron("0 3 * * *").next_after(applied)
    loop = TriggerLoop(registry, monitor, interval_s=60)
    (early,) = loop.tick(due - timedelta(minutes=1))
    assert not early.checks[0].fired and jobs_of(registry) == []
    for minutes in (1, 5, 30):  # the first pass after the due time submits; later ones not
        (verdict,) = loop.tick(due + timedelta(minutes=minutes))
        for job in jobs_of(registry):
            if job.active:
                finish(registry, job)
    (job,) = jobs_of(registry)
    assert job.request["trigger"] == "schedule"
    assert job.request["at"] == (due + timedelta(minutes=1)).isoformat()
    assert isinstance(verdict.checks[0].evidence, ScheduleEvidence)
    assert verdict.checks[0].evidence.due == due + timedelta(days=1)
    loop.tick(due + timedelta(days=1, minutes=2))
    assert [j.request["trigger"] for j in jobs_of(registry)] == ["schedule", "schedule"]


# -- the loop ---------------------------------------------------------------------------------

def test_a_broken_policy_does_not_stop_the_loop(registry: Registry, monitor: Monitor,
                                                tmp_path: Path) -> None:
    EndpointService(registry).create({"name": "a-broken", "routes": [{"ref": "churn:1"}]},
                                     actor="setup")
    PolicyService(registry).apply(policy_from_dict({"endpoint": "a-broken", **DRIFT}),
                                  actor="tester")
    with registry.store.db.write() as conn:  # a spec this version cannot read
        conn.execute(update(policies).where(policies.c.endpoint == "a-broken").values(
            spec={"endpoint": "a-broken", "triggers": {"drift": {"of": "many"}}}))
    drift_windows(monitor, {0, 1, 2, 3, 4, 5})
    apply(registry, **DRIFT)
    verdicts = TriggerLoop(registry, monitor, interval_s=60).tick(T + timedelta(minutes=5))
    assert [v.endpoint for v in verdicts] == [ENDPOINT]
    (job,) = jobs_of(registry)
    assert job.request["trigger"] == "drift"


def test_the_loop_thread_submits_and_stops(registry: Registry, monitor: Monitor) -> None:
    drift_windows(monitor, {0, 1, 2, 3, 4, 5})
    apply(registry, **DRIFT)
    submitted = threading.Event()
    loop = TriggerLoop(registry, monitor, interval_s=0.05,
                       notify=lambda event: submitted.set(),
                       clock=lambda: T + timedelta(minutes=5))
    loop.start()
    try:
        assert submitted.wait(60)
    finally:
        loop.stop()
    (job,) = jobs_of(registry)
    assert job.request["trigger"] == "drift"


def test_the_loop_interval_comes_from_settings(registry: Registry, monitor: Monitor,
                                               settings: Settings) -> None:
    custom = settings.model_copy(update={"pipelines": settings.pipelines.model_copy(
        update={"trigger_interval_s": 7.5})})
    assert TriggerLoop.from_settings(custom, registry, monitor).interval_s == 7.5
    from mlharbor.core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="interval_s"):
        TriggerLoop(registry, monitor, interval_s=0)


@hsettings(derandomize=True, deadline=None, max_examples=300)
@given(st.integers(min_value=0, max_value=4_000_000_000_000_000),
       st.integers(min_value=1, max_value=7 * 86_400_000_000))
def test_grid_windows_end_at_or_before_now_and_repeat_within_a_window(now_us: int,
                                                                      step_us: int) -> None:
    from mlharbor.monitoring.windows import moment_of

    now, window = moment_of(now_us), timedelta(microseconds=step_us)
    end = grid_end(now, window)
    assert end <= now < end + window
    assert grid_end(end, window) == end  # a grid point is its own window end
    later = min(now + window - timedelta(microseconds=1), end + window - timedelta(
        microseconds=1))
    assert grid_end(later, window) == end  # every pass within the window judges the same
