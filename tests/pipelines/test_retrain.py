"""The retrain job kind on real parts: a registry in a tmp home, the demo recipe trained on a
slice of the bundled churn data, the prediction log and the feedback store written through
their own APIs, and the durable job runner running kind ``retrain``."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlharbor.core.loop import RetrainRequest, RetrainTrigger
from mlharbor.core.records import VersionStatus, to_dict
from mlharbor.monitoring.service import Monitor
from mlharbor.pipelines import train_job
from mlharbor.pipelines.jobs import Job, JobRunner, JobState, JobStore, StepState
from mlharbor.pipelines.policy import Policy
from mlharbor.pipelines.retrain import (
    JOB_TAG,
    REASON_TAG,
    VERDICT_TAG,
    retrain_kind,
    target_from_results,
)
from mlharbor.pipelines.snapshot import read_snapshot
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from mlharbor.training.recipe import load_recipe
from tests.pipelines.conftest import CHURN

ENDPOINT = "churn"
FEATURES = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "senior",
            "contract", "internet", "payment_method"]


class Outputs:  # what serving hands the log: predictions and class probabilities
    def __init__(self, predictions: Any, probabilities: Any) -> None:
        self.predictions, self.probabilities = predictions, probabilities


class SimulatedCrash(BaseException):
    """Escapes the runner like a SIGKILL would: no step or job state is written after it."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", training={"n_jobs": 1})


def train_champion(folder: Path, settings: Settings) -> None:
    """The conftest recipe (the demo's, made small) over the first 800 rows: churn:1."""
    from tests.pipelines.conftest import RECIPE

    folder.mkdir(parents=True, exist_ok=True)
    pd.read_csv(CHURN).head(800).to_csv(folder / "churn.csv", index=False)
    (folder / "recipe.yaml").write_text(RECIPE)
    registry = Registry.from_settings(settings)
    try:
        result = train_job.train(load_recipe(folder / "recipe.yaml"), registry=registry,
                                 settings=settings)
    finally:
        registry.close()
    assert result.passed and result.alias == "champion" and result.version.ref == "churn:1"


@pytest.fixture(scope="module")
def champion_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home holding the trained champion, trained once; each test gets a copy."""
    root = tmp_path_factory.mktemp("retrain-champion")
    train_champion(root / "data", Settings(home=root / "home", training={"n_jobs": 1}))
    return root / "home"


@pytest.fixture
def registry(settings: Settings, champion_home: Path) -> Iterator[Registry]:
    """A registry whose champion is churn:1 (its training data is never changed)."""
    shutil.copytree(champion_home, settings.home)
    reg = Registry.from_settings(settings)
    yield reg
    reg.close()


@pytest.fixture
def monitor(settings: Settings, registry: Registry) -> Iterator[Monitor]:
    mon = Monitor(settings, registry)
    yield mon
    mon.log.close()


def serve_and_label(monitor: Monitor, rows: pd.DataFrame, labels: list[Any], *,
                    start: datetime, first: int = 0) -> None:
    """Log each row as a served request (plus a shadow copy of some), then send its label."""
    for i, (_, row) in enumerate(rows.iterrows(), start=first):
        inputs = {c: row[c].item() if hasattr(row[c], "item") else row[c] for c in FEATURES}
        at = start + timedelta(seconds=i)
        monitor.log.emit(_record(f"r{i}", inputs, at))
        if i % 10 == 0:  # a shadow's answer to the same request: not a second training row
            monitor.log.emit(_record(f"r{i}", inputs, at, shadow=True))
    monitor.log.flush()
    monitor.log.compact()
    accepted = monitor.add_feedback(ENDPOINT, {"labels": [
        {"request_id": f"r{i}", "label": int(y)} for i, y in enumerate(labels, start=first)]})
    assert accepted == len(labels)


def _record(rid: str, inputs: dict[str, Any], at: datetime, *, shadow: bool = False) -> Any:
    from mlharbor.core.records import PredictionRecord

    return PredictionRecord(rid, ENDPOINT, "churn@champion", 1, inputs,
                            Outputs(np.array([0]), np.array([[0.7, 0.3]])), 0.01, at,
                            shadow=shadow)


def production_rows() -> pd.DataFrame:
    return pd.read_csv(CHURN).iloc[2000:2400].reset_index(drop=True)


def runner_for(registry: Registry, settings: Settings, monitor: Monitor,
               policy: Callable[[Job], Policy], **options: Any) -> JobRunner:
    kind = retrain_kind(registry, settings, feedback=monitor.feedback, policy_for=policy)
    return JobRunner(JobStore(registry.store), [kind], **options)


def submit(runner: JobRunner, base_ref: str | None = None) -> Job:
    request = RetrainRequest(ENDPOINT, RetrainTrigger.MANUAL, "test", base_ref, "tester",
                             datetime.now(UTC))
    job, created = runner.submit("retrain", ENDPOINT, to_dict(request), actor="tester")
    assert created
    return job


#: The holdout is drawn from the production rows alone (the champion never trained on them):
#: 100 of 400 rows, so the policy allows the challenger a wider margin than the recipe.
OVERRIDES = {"validation": {"bootstrap": 50},
             "gates": ["f1 >= 0.4", "better than baseline",
                       "not worse than champion by more than 0.05"]}


def policy(overrides: dict[str, Any] | None = None, **data: Any) -> Callable[[Job], Policy]:
    spec = Policy(endpoint=ENDPOINT, model="churn",
                  data={"production_window": "1d", "min_rows": 100, **data},
                  recipe={"overrides": OVERRIDES if overrides is None else overrides},
                  validation={"gates": ["accuracy >= 0.6"]})
    return lambda job: spec


def step(job: Job, name: str) -> Any:
    return next(s for s in job.steps if s.name == name)


def take_over(runner: JobRunner) -> Job:
    """Poll with ``runner`` until the dead runner's lease expires and it runs the job."""
    for _ in range(600):
        done = runner.run_once()
        if done is not None:
            return done
        time.sleep(0.05)
    raise AssertionError("the job was never taken over")


# -- (1) snapshot, train, validate, one challenger --------------------------------------------

def test_a_job_snapshots_trains_validates_and_registers_one_challenger(
        registry: Registry, settings: Settings, monitor: Monitor) -> None:
    rows = production_rows()
    serve_and_label(monitor, rows, list(rows["churn"]),
                    start=datetime.now(UTC) - timedelta(hours=1))
    runner = runner_for(registry, settings, monitor, policy())
    job = submit(runner)

    done = runner.run_once()
    assert done is not None and done.state is JobState.SUCCEEDED, done and done.error
    assert [s.state for s in done.steps] == [StepState.SUCCEEDED] * 3

    # The snapshot: the champion's 800 rows (fingerprint-checked) + 400 labelled served rows
    # (the shadow copies are not rows), stored content-addressed and recorded.
    made = step(done, "snapshot").result
    assert made["base"] == "churn:1"
    snap = made["snapshot"]
    assert [(p["kind"], p["rows"]) for p in snap["parts"]] == [("champion_data", 800),
                                                               ("production", 400)]
    v1 = registry.get_version("churn:1")
    assert snap["parts"][0]["fingerprint"] == v1.lineage["dataset"]["fingerprint"]
    assert snap["rows"] == 1200 and snap["target"] == "churn"
    assert snap["uri"] == "artifact:sha256:" + snap["fingerprint"].removeprefix("sha256:")
    stored = read_snapshot(registry, snap["uri"], snap["fingerprint"]).frame
    assert len(stored) == 1200 and list(stored.columns) == list(pd.read_csv(CHURN).columns)
    served = stored.iloc[800:].reset_index(drop=True)
    pd.testing.assert_frame_equal(served[[*FEATURES, "churn"]], rows[[*FEATURES, "churn"]],
                                  check_dtype=False)
    assert served["customer_id"].isna().all()  # not an input: unknown for served rows

    # Exactly one challenger, tagged with the job, trained on the snapshot; the champion alias
    # did not move, the challenger alias points at it.
    versions = registry.list_versions("churn").items
    assert sorted(v.version for v in versions) == [1, 2]
    v2 = registry.get_version("churn:2")
    assert v2.status is VersionStatus.READY
    assert v2.tags[JOB_TAG] == job.id and v2.tags[VERDICT_TAG] == "validated"
    assert v2.lineage["dataset"]["uri"] == snap["uri"]
    assert v2.lineage["retrain"]["base"] == "churn:1"
    model = registry.get_model("churn")
    assert model.aliases == {"champion": 1, "challenger": 2}
    moves = registry.alias_history("churn")
    assert [(m.alias, m.to_version) for m in moves if m.alias == "champion"] == [("champion", 1)]
    assert job.id in next(m for m in moves if m.alias == "challenger").reason

    trained = step(done, "train").result
    assert trained == {"version": "churn:2", "status": "ready", "reused": False,
                       "winner": v2.params["candidate"], "base": "churn:1"}
    report = step(done, "validate").result
    assert report["challenger"] == "churn:2" and report["base"] == "churn:1"
    assert report["passed"] is True and report["champion_ref"] == "churn:1"
    gates = {g["gate"]: g["passed"] for g in report["gates"]}
    assert list(gates) == [*OVERRIDES["gates"], "accuracy >= 0.6"]  # overrides + the policy's
    assert all(gates.values())
    assert v2.lineage["recipe"]["validation"]["bootstrap"] == 50  # deep-merged: folds kept
    assert v2.lineage["recipe"]["validation"]["folds"] == 3
    assert report["champion"]["f1"] > 0 and "f1" in report["baseline"]
    assert report["metrics"]["accuracy"] >= 0.6
    # Judged on rows the champion never saw: the holdout came from the 400 production rows
    # only (the recipe's quarter of them), every champion row trained the challenger.
    splits = v2.lineage["evaluation"]["splits"]
    assert splits["holdout_pool_rows"] == 400 and report["holdout_rows"] == 100
    assert splits["train_rows"] == 800 + 300
    assert v2.lineage["retrain"]["holdout_from"] == {
        "rule": "unseen_by_champion", "columns": [*FEATURES, "churn"], "rows": 400}

    # The hook for the rollout steps: the challenger validate passed, the champion it beat.
    target = target_from_results({s.name: s.result for s in done.steps}, registry)
    assert (target.model, target.alias, target.champion, target.challenger) == (
        "churn", "champion", 1, 2)


# -- (2) a worse challenger is rejected at validation -----------------------------------------

def test_a_challenger_trained_on_shuffled_labels_is_rejected_and_nothing_moves(
        registry: Registry, settings: Settings, monitor: Monitor) -> None:
    rows = production_rows()
    shuffled = np.random.default_rng(3).permutation(rows["churn"].to_numpy())
    serve_and_label(monitor, rows, list(shuffled), start=datetime.now(UTC) - timedelta(hours=1))
    runner = runner_for(registry, settings, monitor, policy(champion_data=False))
    job = submit(runner, base_ref="churn:1")  # named in the request, not via the policy

    done = runner.run_once()
    assert done is not None and done.state is JobState.FAILED
    assert [s.state for s in done.steps] == [StepState.SUCCEEDED, StepState.SUCCEEDED,
                                             StepState.FAILED]
    assert done.error is not None and "rejected at validation" in done.error
    assert [p["kind"] for p in step(done, "snapshot").result["snapshot"]["parts"]] == [
        "production"]

    rejected = registry.get_version("churn:2")
    assert rejected.tags[JOB_TAG] == job.id and rejected.tags[VERDICT_TAG] == "rejected"
    reason = rejected.tags[REASON_TAG]
    assert "gate" in reason and reason in done.error
    assert rejected.status is VersionStatus.FAILED  # judged by the gates; never ready
    assert [v.ref for v in registry.list_versions("churn", status="ready").items] == ["churn:1"]
    assert registry.get_model("churn").aliases == {"champion": 1}
    assert [m.to_version for m in registry.alias_history("churn")] == [1]


# -- (3) a crash after registering, mid-step: the re-run reuses the version -------------------

def test_a_crash_after_registration_resumes_with_one_version(
        registry: Registry, settings: Settings, monitor: Monitor,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = production_rows()
    serve_and_label(monitor, rows, list(rows["churn"]),
                    start=datetime.now(UTC) - timedelta(hours=1))
    real = train_job.register_outcome
    registered: list[str] = []

    def register_then_crash(*args: Any, **kwargs: Any) -> Any:
        version = real(*args, **kwargs)
        registered.append(version.ref)
        raise SimulatedCrash("the server died right after registering")

    monkeypatch.setattr(train_job, "register_outcome", register_then_crash)
    first = runner_for(registry, settings, monitor, policy(), lease_seconds=0.5, owner="first")
    job = submit(first)
    with pytest.raises(SimulatedCrash):
        first.run_once()
    assert registered == ["churn:2"]
    stuck = first.store.get(job.id)
    assert stuck.state is JobState.RUNNING and stuck.lease_owner == "first"
    assert step(stuck, "train").state is StepState.RUNNING
    assert step(stuck, "train").progress is None  # the crash came before the note

    def counting(*args: Any, **kwargs: Any) -> Any:
        version = real(*args, **kwargs)
        registered.append(version.ref)
        return version

    monkeypatch.setattr(train_job, "register_outcome", counting)
    second = runner_for(registry, settings, monitor, policy(), owner="second")
    done = take_over(second)
    assert done.state is JobState.SUCCEEDED, done and done.error
    assert done.attempt == 2 and step(done, "train").attempts == 2
    assert registered == ["churn:2"]  # the re-run registered nothing
    assert step(done, "train").result["reused"] is True
    assert sorted(v.version for v in registry.list_versions("churn").items) == [1, 2]
    assert registry.get_model("churn").aliases == {"champion": 1, "challenger": 2}


def test_with_the_champions_data_in_the_snapshot_the_champion_gate_rejects_shuffled_labels(
        registry: Registry, settings: Settings, monitor: Monitor) -> None:
    """On a holdout that is not all noise, the champion comparison itself rejects it."""
    rows = pd.read_csv(CHURN).iloc[2000:2800].reset_index(drop=True)
    shuffled = np.random.default_rng(3).permutation(rows["churn"].to_numpy())
    serve_and_label(monitor, rows, list(shuffled), start=datetime.now(UTC) - timedelta(hours=1))
    runner = runner_for(registry, settings, monitor, policy(overrides={}))  # recipe's gates
    submit(runner)

    done = runner.run_once()
    assert done is not None and done.state is JobState.FAILED
    reason = registry.get_version("churn:2").tags[REASON_TAG]
    assert "gate 'not worse than champion by more than 0.01' failed" in reason
    assert "vs champion churn:1" in reason
    assert registry.get_model("churn").aliases == {"champion": 1}


# -- (3b) a crash after storing the snapshot: the re-run reuses it ----------------------------

def test_a_crash_after_the_snapshot_is_stored_reuses_it(
        registry: Registry, settings: Settings, monitor: Monitor,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = production_rows()
    start = datetime.now(UTC) - timedelta(hours=1)
    serve_and_label(monitor, rows, list(rows["churn"]), start=start)
    real = JobStore.finish_step

    def crash_when_snapshot_ends(self: JobStore, fence: Any, ordinal: int, state: StepState,
                                 **kwargs: Any) -> None:
        if ordinal == 0 and state is StepState.SUCCEEDED:
            raise SimulatedCrash("the server died before the snapshot step was marked done")
        real(self, fence, ordinal, state, **kwargs)

    monkeypatch.setattr(JobStore, "finish_step", crash_when_snapshot_ends)
    first = runner_for(registry, settings, monitor, policy(), lease_seconds=0.5, owner="first")
    job = submit(first)
    with pytest.raises(SimulatedCrash):
        first.run_once()
    noted = step(first.store.get(job.id), "snapshot").progress["result"]
    monkeypatch.setattr(JobStore, "finish_step", real)

    # More labelled rows arrive in the window meanwhile: the job keeps the rows it froze.
    more = pd.read_csv(CHURN).iloc[3000:3100].reset_index(drop=True)
    serve_and_label(monitor, more, list(more["churn"]), start=start + timedelta(minutes=20),
                    first=len(rows))
    done = take_over(runner_for(registry, settings, monitor, policy(), owner="second"))
    assert done.state is JobState.SUCCEEDED, done.error
    made = step(done, "snapshot")
    assert made.attempts == 2 and made.result == noted
    assert made.result["snapshot"]["rows"] == 1200
    assert registry.get_version("churn:2").lineage["dataset"]["uri"] == noted["snapshot"]["uri"]


def test_a_bad_request_fails_the_job_at_the_first_step_with_the_field(
        registry: Registry, settings: Settings, monitor: Monitor) -> None:
    runner = runner_for(registry, settings, monitor, policy())
    runner.submit("retrain", ENDPOINT, {"trigger": "sometimes"}, actor="tester")
    done = runner.run_once()
    assert done is not None and done.state is JobState.FAILED
    assert done.error is not None and "unknown trigger 'sometimes'" in done.error
    assert "drift, metric_floor" in done.error


# -- (4) the champion's data changed since it was trained -------------------------------------

def test_a_fingerprint_mismatch_of_the_champions_data_fails_the_job_clearly(
        tmp_path: Path) -> None:
    own = Settings(home=tmp_path / "own-home", training={"n_jobs": 1})
    train_champion(tmp_path / "own-data", own)
    data = tmp_path / "own-data" / "churn.csv"
    frame = pd.read_csv(data)
    frame.loc[0, "monthly_charges"] += 1.0
    frame.to_csv(data, index=False)
    registry = Registry.from_settings(own)
    monitor = Monitor(own, registry)
    try:
        runner = runner_for(registry, own, monitor, policy())
        submit(runner)
        done = runner.run_once()
        assert done is not None and done.state is JobState.FAILED
        assert step(done, "snapshot").state is StepState.FAILED
        assert done.error is not None and "IntegrityError" in done.error
        assert "training data of churn:1 changed since it was trained" in done.error
        assert str(data) in done.error
        assert [v.version for v in registry.list_versions("churn").items] == [1]
    finally:
        monitor.log.close()
        registry.close()
