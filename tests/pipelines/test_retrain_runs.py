"""A retraining job's training is a tracked run, as `mlharbor train`'s is: the composition
root's job runner (build_control_plane) runs a real ``retrain`` job on a home holding the
champion churn:1 and the ``churn`` endpoint (tests/pipelines/loophome.py); the run is in the
experiment ``churn`` with a child per candidate and search point, tagged with the job,
endpoint and trigger; the challenger and the run name each other. A training that fails
leaves its run FAILED with the error, a job cancelled while it trains its run KILLED; a runner
that dies mid-training leaves a run the re-run ends KILLED, and one that dies right after
registering leaves a run the re-run links to the version it reuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlharbor.bootstrap import ControlPlaneServices, build_control_plane
from mlharbor.core.loop import RetrainTrigger
from mlharbor.core.runs import Run, RunStatus
from mlharbor.pipelines import train_job
from mlharbor.pipelines.jobs import Job, JobRunner, JobState, StepState
from mlharbor.pipelines.submit import submit_retrain
from mlharbor.pipelines.train_runs import TrainingRecorder
from mlharbor.settings import Settings
from mlharbor.tracking.store import TrackingStore
from tests.pipelines.loophome import apply_policy, build_champion_home, copy_home, fast_policy
from tests.support import wait_until

#: The fast policy with one cheap candidate: for the tests about a run's status, not its tree.
ONE_CANDIDATE = fast_policy().replace(
    "    validation: {bootstrap: 50}\n",
    "    validation: {bootstrap: 20}\n"
    "    candidates: [{name: logistic, estimator: sklearn.linear_model.LogisticRegression,"
    " params: {max_iter: 300}}]\n")


class SimulatedCrash(BaseException):
    """Escapes the runner like a SIGKILL would: nothing is written after it."""


@pytest.fixture(scope="module")
def base_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_champion_home(tmp_path_factory.mktemp("retrain-runs"))


def _settings(home: Path, **pipelines: Any) -> Settings:
    return Settings(home=home, training={"n_jobs": 1},
                    monitoring={"default_alert_rules": False},
                    pipelines={"job_poll_s": 0.1, "trigger_interval_s": 3600, **pipelines})


@pytest.fixture
def home(base_home: Path, tmp_path: Path) -> Path:
    return copy_home(base_home, tmp_path / "home")


@pytest.fixture
def services(home: Path) -> Iterator[ControlPlaneServices]:
    built = build_control_plane(_settings(home), owner="runs-test")
    yield built
    built.close()


def _submit(services: ControlPlaneServices, policy: str) -> Job:
    apply_policy(services.registry, policy)
    job, created = submit_retrain(services.registry, "churn", trigger=RetrainTrigger.MANUAL,
                                  reason="retrain-runs test", actor="tester")
    assert created
    return job


def _store(services: ControlPlaneServices) -> TrackingStore:
    return TrackingStore(services.registry.store.db)


def _tree(store: TrackingStore, run: Run) -> dict[str, Run]:
    """Every descendant of ``run`` by name."""
    found: dict[str, Run] = {}
    for child in store.child_runs(run.run_id):
        found[child.name] = child
        found.update(_tree(store, child))
    return found


def _step(job: Job, name: str) -> Any:
    return next(s for s in job.steps if s.name == name)


def test_a_retraining_job_records_its_training_as_a_run(
        services: ControlPlaneServices) -> None:
    job = _submit(services, fast_policy())
    done = services.runner.run_once()
    assert done is not None and done.state is JobState.SUCCEEDED, done and done.error

    registry, store = services.registry, _store(services)
    version = registry.get_version("churn:2")
    trained = _step(done, "train").result
    run = store.get_run(version.tags["mlharbor.run_id"])
    assert trained["run_id"] == run.run_id == version.lineage["tracking"]["run_id"]
    assert run.tags["mlharbor.model_version"] == "churn:2"
    assert store.get_experiment(run.experiment_id).name == "churn"  # the recipe's name
    assert run.status is RunStatus.FINISHED and run.parent_run_id is None
    assert run.name == "retrain churn"
    assert {k: run.tags[k] for k in ("mlharbor.job", "mlharbor.endpoint", "mlharbor.trigger",
                                     "mlharbor.reason", "mlharbor.requested_by",
                                     "mlharbor.base_version", "mlharbor.kind")} == {
        "mlharbor.job": job.id, "mlharbor.endpoint": "churn", "mlharbor.trigger": "manual",
        "mlharbor.reason": "retrain-runs test", "mlharbor.requested_by": "tester",
        "mlharbor.base_version": "churn:1", "mlharbor.kind": "training"}
    # Trained on the job's snapshot: the run says so, as the version does.
    snapshot = _step(done, "snapshot").result["snapshot"]
    assert run.tags["mlharbor.dataset.fingerprint"] == snapshot["fingerprint"] == \
        version.lineage["dataset"]["fingerprint"]
    assert run.params["winner"] == version.params["candidate"] == trained["winner"]
    assert run.metrics["f1"].value == pytest.approx(version.metrics["f1"])
    # A child per candidate, and per search point of the searched forest, all finished.
    tree = _tree(store, run)
    assert set(tree) == {"logistic", "forest", "forest max_depth=4", "forest max_depth=8"}
    assert all(r.status is RunStatus.FINISHED for r in tree.values())
    assert len(store.metric_history(tree["logistic"].run_id, "fold.f1")[0]) == 3
    # The champion's own run (none: it was trained untracked) is not touched; only one run.
    page = store.search_runs([run.experiment_id], filter="attributes.status = 'FINISHED'")
    assert len(page.runs) == 5


def test_a_retraining_that_fails_leaves_its_run_failed_with_the_error(
        services: ControlPlaneServices, monkeypatch: pytest.MonkeyPatch) -> None:
    """The challenger is trained, then the registry is unreachable: the job fails, the run
    FAILED with the error, and nothing is registered."""
    from mlharbor.core.errors import UnavailableError

    def outage(*_args: Any, **_kwargs: Any) -> Any:
        raise UnavailableError("the metadata database is unreachable")

    monkeypatch.setattr(train_job, "register_outcome", outage)  # the seam is our own
    job = _submit(services, ONE_CANDIDATE)
    done = services.runner.run_once()
    assert done is not None and done.state is JobState.FAILED
    assert "unreachable" in (done.error or "")
    store = _store(services)
    runs = store.search_runs([store.get_experiment_by_name("churn").experiment_id],
                             filter=f"tags.`mlharbor.job` = '{job.id}'").runs
    assert len(runs) == 1
    run = runs[0]
    assert run.status is RunStatus.FAILED
    assert run.error == "UnavailableError: the metadata database is unreachable"
    assert "mlharbor.model_version" not in run.tags
    assert [(c.name, c.status) for c in store.child_runs(run.run_id)] == [
        ("logistic", RunStatus.FINISHED)]  # trained and scored before the outage
    assert [v.version for v in services.registry.list_versions("churn").items] == [1]


def test_a_job_cancelled_while_it_trains_leaves_its_run_killed(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlharbor.pipelines.jobs import StepContext
    from mlharbor.pipelines.retrain import Retrainer

    contexts: list[StepContext] = []
    real_train, real_fold = Retrainer.train, TrainingRecorder.fold

    def train(self: Retrainer, ctx: StepContext) -> dict[str, Any]:
        contexts.append(ctx)
        return real_train(self, ctx)

    def fold(self: TrainingRecorder, key: str, scores: Any) -> None:
        if not plane.jobs.get(job.id).cancel_requested:  # someone cancels mid-training
            plane.jobs.cancel(job.id, actor="tester", reason="wrong data")
            wait_until(contexts[0].cancel_requested.is_set, 30, "the runner to see it")
        real_fold(self, key, scores)

    monkeypatch.setattr(Retrainer, "train", train)
    monkeypatch.setattr(TrainingRecorder, "fold", fold)
    plane = build_control_plane(_settings(home, job_lease_s=0.3), owner="cancel-test")
    try:
        job = _submit(plane, ONE_CANDIDATE)
        done = plane.runner.run_once()
        assert done is not None and done.state is JobState.CANCELLED
        store = _store(plane)
        run = store.get_run(_step(done, "train").progress["run"])
        assert run.status is RunStatus.KILLED
        assert run.error == f"Job {job.id} was cancelled while it trained."
        assert [(c.name, c.status) for c in store.child_runs(run.run_id)] == [
            ("logistic", RunStatus.KILLED)]
        assert [v.version for v in plane.registry.list_versions("churn").items] == [1]
    finally:
        plane.close()


def _take_over(runner: JobRunner) -> Job:
    """Poll with ``runner`` until the dead runner's lease expires and it runs the job."""
    done: list[Job] = []

    def claimed() -> bool:
        job = runner.run_once()
        if job is not None:
            done.append(job)
        return bool(done)

    wait_until(claimed, 60, "the job to be taken over")
    return done[0]


def test_runs_left_by_dead_runners_are_settled_by_the_re_runs(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner dies mid-training (its run stays RUNNING); the next re-runs the step and
    ends that run KILLED; it dies right after registering (its run RUNNING, not yet naming
    the version); the third reuses the version and links and ends that run."""
    real_fold, real_close = TrainingRecorder.fold, TrainingRecorder.close
    real_register = train_job.register_outcome
    crash: dict[str, bool] = {"fold": True, "register": False}

    def fold(self: TrainingRecorder, key: str, scores: Any) -> None:
        if crash["fold"]:
            raise SimulatedCrash("the runner died mid-training")
        real_fold(self, key, scores)

    def close(self: TrainingRecorder, error: BaseException | None = None,
              **kwargs: Any) -> None:
        if not isinstance(error, SimulatedCrash):  # a dead process ends no run
            real_close(self, error, **kwargs)

    def register(*args: Any, **kwargs: Any) -> Any:
        version = real_register(*args, **kwargs)
        if crash["register"]:
            raise SimulatedCrash("the runner died right after registering")
        return version

    monkeypatch.setattr(TrainingRecorder, "fold", fold)
    monkeypatch.setattr(TrainingRecorder, "close", close)
    monkeypatch.setattr(train_job, "register_outcome", register)
    planes = []  # one control plane (and tracker) per "process"
    try:
        for owner in ("first", "second", "third"):
            planes.append(build_control_plane(_settings(home, job_lease_s=0.6), owner=owner))
        first, second, third = planes
        job = _submit(first, ONE_CANDIDATE)
        with pytest.raises(SimulatedCrash):
            first.runner.run_once()
        store = _store(first)
        killed_id = _step(first.jobs.get(job.id), "train").progress["run"]
        assert store.get_run(killed_id).status is RunStatus.RUNNING

        crash.update(fold=False, register=True)
        with pytest.raises(SimulatedCrash):
            _take_over(second.runner)
        killed = store.get_run(killed_id)
        assert killed.status is RunStatus.KILLED
        assert killed.error is not None and job.id in killed.error
        assert "ran again" in killed.error
        assert all(c.status is RunStatus.KILLED for c in store.child_runs(killed_id))
        version = first.registry.get_version("churn:2")
        left_id = version.tags["mlharbor.run_id"]
        assert left_id != killed_id
        left = store.get_run(left_id)
        assert left.status is RunStatus.RUNNING and "mlharbor.model_version" not in left.tags

        crash.update(register=False)
        done = _take_over(third.runner)
        assert done.state is JobState.SUCCEEDED, done.error
        assert _step(done, "train").result["reused"] is True
        assert _step(done, "train").result["run_id"] == left_id
        assert _step(done, "train").state is StepState.SUCCEEDED
        settled = store.get_run(left_id)
        assert settled.status is RunStatus.FINISHED
        assert settled.tags["mlharbor.model_version"] == "churn:2"
        assert store.get_run(killed_id).status is RunStatus.KILLED  # unchanged
        assert sorted(v.version for v in first.registry.list_versions("churn").items) == [1, 2]
    finally:
        for plane in planes:
            plane.close()


def test_a_left_run_deleted_meanwhile_does_not_block_the_re_run(tmp_path: Path) -> None:
    """Someone deleted (soft) the run an earlier attempt left open: settling it must not
    fail the step ("Run ... is deleted; restore it to change it"), which every re-run would
    repeat, leaving the job stuck. The deleted run stays as it was."""
    from types import SimpleNamespace

    from mlharbor.bootstrap import open_registry
    from mlharbor.bootstrap.tracking import open_tracker
    from mlharbor.core.runs import LifecycleStage
    from mlharbor.pipelines.retrain_runs import JobRuns
    from mlharbor.pipelines.train_runs import RUN_ID_TAG

    settings = Settings(home=tmp_path / "home")
    registry = open_registry(settings)
    tracker = open_tracker(settings, registry=registry)
    try:
        store = tracker.store
        left = store.create_run("0", run_name="left by a dead runner")
        child = store.create_run("0", parent_run_id=left.run_id)
        produced = store.create_run("0", run_name="registered before the crash")
        for run in (left, produced):
            store.set_run_lifecycle(run.run_id, LifecycleStage.DELETED)
        ctx: Any = SimpleNamespace(job=SimpleNamespace(id="job-1"),
                                   progress={"run": left.run_id})
        JobRuns(tracker).settle(ctx, None)  # the re-run trains again
        version: Any = SimpleNamespace(ref="churn:2", tags={RUN_ID_TAG: produced.run_id})
        ctx.progress = {"run": produced.run_id}
        JobRuns(tracker).settle(ctx, version)  # the re-run reuses the version
        for run in (left, produced):
            kept = store.get_run(run.run_id)
            assert kept.status is RunStatus.RUNNING
            assert kept.lifecycle_stage is LifecycleStage.DELETED
        assert store.get_run(child.run_id).status is RunStatus.RUNNING
    finally:
        tracker.flusher.close()
        registry.close()
