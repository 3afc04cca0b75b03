"""The Python API: start_run as a context manager (nested runs, FAILED with the error),
params, tags, artifacts (files and folders, with digests), metrics queued and written in
batches by the background flusher with nothing lost (a small queue forces back pressure),
and registering a model from a run through the registry's format checks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlharbor.bootstrap import open_registry
from mlharbor.bootstrap.tracking import open_tracker
from mlharbor.core.errors import InvalidInputError, UnsafeArtifactError
from mlharbor.core.runs import RunStatus
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from mlharbor.tracking import fluent
from mlharbor.tracking.fluent import Tracker


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    reg = open_registry(settings)
    yield reg
    reg.close()


@pytest.fixture
def tracker(settings: Settings, registry: Registry) -> Iterator[Tracker]:
    tr = open_tracker(settings, registry=registry)
    fluent.use(tr)
    yield tr
    fluent.use(None)
    tr.flusher.close()


def test_runs_metrics_artifacts_nothing_lost(tracker: Tracker, tmp_path: Path) -> None:
    from mlharbor import tracking

    tracker.flusher._queue.maxsize = 50  # back pressure: the loop waits, nothing dropped
    folder = tmp_path / "plots"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    with tracking.start_run(experiment="fluent", run_name="outer") as outer:
        tracking.log_params({"lr": 0.1, "trees": 10})
        tracking.set_tag("team", "churn")
        for step in range(2000):
            tracking.log_metric("loss", 1.0 / (step + 1), step=step)
        tracking.log_artifacts(folder, "plots")
        with tracking.start_run(run_name="inner", nested=True) as inner:
            tracking.log_metrics({"auc": 0.8})
        with pytest.raises(InvalidInputError, match="nested=True"):
            tracking.start_run()
    store = tracker.store
    points, _ = store.metric_history(outer.run_id, "loss")
    assert [p.step for p in points] == list(range(2000))
    run = store.get_run(outer.run_id)
    assert run.status is RunStatus.FINISHED and run.params == {"lr": "0.1", "trees": "10"}
    assert store.get_run(inner.run_id).parent_run_id == outer.run_id
    assert store.get_run(inner.run_id).metrics["auc"].value == 0.8
    root = f"{run.experiment_id}/{run.run_id}/artifacts/plots"
    stored = {a.path[len(root) + 1:]: a.sha256 for a in tracker.files.files_under(root)}
    assert stored == {"a.txt": hashlib.sha256(b"a").hexdigest(),
                      "sub/b.txt": hashlib.sha256(b"b").hexdigest()}
    assert tracking.active_run() is None


def test_failed_run_records_the_error(tracker: Tracker) -> None:
    with pytest.raises(ZeroDivisionError), fluent.start_run(run_name="bad") as run:
        fluent.log_metric("x", 1.0)
        _ = 1 / 0
    got = tracker.store.get_run(run.run_id)
    assert got.status is RunStatus.FAILED
    assert got.error is not None and "ZeroDivisionError" in got.error
    assert got.metrics["x"].value == 1.0  # flushed before the run ended
    with pytest.raises(InvalidInputError, match="No run is active"):
        fluent.log_metric("x", 1.0)
    with fluent.start_run() as run2, pytest.raises(InvalidInputError, match="number"):
        fluent.log_metric("x", "high")  # type: ignore[arg-type]
    assert tracker.store.get_run(run2.run_id).metrics == {}


def test_register_model_from_run(tracker: Tracker, registry: Registry, tmp_path: Path
                                 ) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.9, 0.1]],
                                     [0, 1, 0, 1])
    with fluent.start_run(run_name="fit") as run:
        fluent.log_param("C", 1.0)
        fluent.log_metric("auc", 0.75)
        ref = fluent.register_model("fluent-model", model)
        pickled = tmp_path / "model.pkl"
        joblib.dump(model, pickled)
        with pytest.raises(UnsafeArtifactError):
            fluent.register_model("fluent-model", pickled)
    version = registry.get_version(ref)
    assert version.params == {"C": "1.0"} and version.metrics == {"auc": 0.75}
    assert version.lineage["tracking"]["run_id"] == run.run_id
    assert tracker.store.get_run(run.run_id).tags["mlharbor.model_version"] == ref
    assert registry.list_versions("fluent-model").total == 1


def test_a_run_whose_end_is_refused_leaves_the_thread_free(tracker: Tracker) -> None:
    """A run deleted while it ran (MLflow's delete_run from elsewhere) cannot be ended; the
    error says so, and the thread can start its next run (no stuck "already active" entry)."""
    from mlharbor.core.runs import LifecycleStage

    run = fluent.start_run(run_name="deleted meanwhile")
    tracker.store.set_run_lifecycle(run.run_id, LifecycleStage.DELETED)
    with pytest.raises(InvalidInputError, match="is deleted; restore it"):
        run.end()
    assert fluent.active_run() is None
    with fluent.start_run(run_name="next") as nxt:
        fluent.log_metric("x", 1.0)
    assert tracker.store.get_run(nxt.run_id).status is RunStatus.FINISHED
