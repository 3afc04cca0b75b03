"""The retrain job kind on real parts: a registry in a tmp home, the demo recipe trained on a
slice of the bundled churn data, the prediction log and the feedback store written through
their own APIs, and the durable job runner running kind ``retrain``."""

from __future__ import annotations

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
    BASELINE_GATE,
    CHAMPION_GATE,
    JOB_TAG,
    REASON_TAG,
    VERDICT_TAG,
    retrain_kind,
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


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    reg = Registry.from_settings(settings)
    yield reg
    reg.close()


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """The conftest recipe over the first 800 rows (the champion's training data)."""
    from tests.pipelines.conftest import RECIPE

    pd.read_csv(CHURN).head(800).to_csv(tmp_path / "churn.csv", index=False)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    return tmp_path


@pytest.fixture
def champion(small: Path, registry: Registry, settings: Settings) -> str:
    result = train_job.train(load_recipe(small / "recipe.yaml"), registry=registry,
                             settings=settings)
    assert result.passed and result.alias == "champion"
    return str(result.version.ref)


@pytest.fixture
def monitor(settings: Settings, registry: Registry) -> Iterator[Monitor]:
    mon = Monitor(settings, registry)
    yield mon
    mon.log.close()


def serve_and_label(monitor: Monitor, rows: pd.DataFrame, labels: list[Any], *,
                    start: datetime) -> None:
    """Log each row as a served request (plus a shadow copy of some), then send its label."""
    for i, (_, row) in enumerate(rows.iterrows()):
        inputs = {c: row[c].item() if hasattr(row[c], "item") else row[c] for c in FEATURES}
        at = start + timedelta(seconds=i)
        monitor.log.emit(_record(f"r{i}", inputs, at))
        if i % 10 == 0:  # a shadow's answer to the same request: not a second training row
            monitor.log.emit(_record(f"r{i}", inputs, at, shadow=True))
    monitor.log.flush()
    monitor.log.compact()
    accepted = monitor.add_feedback(ENDPOINT, {"labels": [
        {"request_id": f"r{i}", "label": int(y)} for i, y in enumerate(labels)]})
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


def submit(runner: JobRunner, champion: str | None = None) -> Job:
    request = RetrainRequest(ENDPOINT, RetrainTrigger.MANUAL, "test", champion, "tester",
                             datetime.now(UTC))
    job, created = runner.submit("retrain", ENDPOINT, to_dict(request), actor="tester")
    assert created
    return job


#: The champion saw part of the snapshot's holdout (its own training rows are in it), so its
#: score there is optimistic; the policy allows the challenger a wider margin than the recipe.
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


# -- (1) snapshot, train, validate, one challenger --------------------------------------------

def test_a_job_snapshots_trains_validates_and_registers_one_challenger(
        champion: str, registry: Registry, settings: Settings, monitor: Monitor) -> None:
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
    assert made["base"] == champion == "churn:1"
    snap = made["snapshot"]
    assert [(p["kind"], p["rows"]) for p in snap["parts"]] == [("champion_data", 800),
                                                               ("production", 400)]
    v1 = registry.get_version(champion)
    assert snap["parts"][0]["fingerprint"] == v1.lineage["dataset"]["fingerprint"]
    assert snap["rows"] == 1200 and snap["target"] == "churn"
    assert snap["uri"] == "artifact:sha256:" + snap["fingerprint"].removeprefix("sha256:")
    stored = read_snapshot(registry, snap["uri"], snap["fingerprint"]).frame
    assert len(stored) == 1200 and list(stored.columns) == list(pd.read_csv(CHURN).columns)
    served = stored.iloc[800:].reset_index(drop=True)
    pd.testing.assert_frame_equal(served[FEATURES + ["churn"]], rows[FEATURES + ["churn"]],
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


# -- (2) a worse challenger is rejected at validation -----------------------------------------

def test_a_challenger_trained_on_shuffled_labels_is_rejected_and_nothing_moves(
        champion: str, registry: Registry, settings: Settings, monitor: Monitor) -> None:
    rows = production_rows()
    shuffled = np.random.default_rng(3).permutation(rows["churn"].to_numpy())
    serve_and_label(monitor, rows, list(shuffled), start=datetime.now(UTC) - timedelta(hours=1))
    runner = runner_for(registry, settings, monitor, policy(champion_data=False))
    job = submit(runner)

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
        champion: str, registry: Registry, settings: Settings, monitor: Monitor,
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
    done = None
    for _ in range(400):  # until the first runner's lease has expired
        done = second.run_once()
        if done is not None:
            break
        import time

        time.sleep(0.05)
    assert done is not None and done.state is JobState.SUCCEEDED, done and done.error
    assert done.attempt == 2 and step(done, "train").attempts == 2
    assert registered == ["churn:2"]  # the re-run registered nothing
    assert step(done, "train").result["reused"] is True
    assert sorted(v.version for v in registry.list_versions("churn").items) == [1, 2]
    assert registry.get_model("churn").aliases == {"champion": 1, "challenger": 2}


# -- (4) the champion's data changed since it was trained -------------------------------------

def test_a_fingerprint_mismatch_of_the_champions_data_fails_the_job_clearly(
        champion: str, small: Path, registry: Registry, settings: Settings,
        monitor: Monitor) -> None:
    frame = pd.read_csv(small / "churn.csv")
    frame.loc[0, "monthly_charges"] += 1.0
    frame.to_csv(small / "churn.csv", index=False)
    runner = runner_for(registry, settings, monitor, policy())
    submit(runner)

    done = runner.run_once()
    assert done is not None and done.state is JobState.FAILED
    assert step(done, "snapshot").state is StepState.FAILED
    assert done.error is not None and "IntegrityError" in done.error
    assert "training data of churn:1 changed since it was trained" in done.error
    assert str(small / "churn.csv") in done.error
    assert [v.version for v in registry.list_versions("churn").items] == [1]
