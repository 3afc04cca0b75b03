"""A real `mlharbor train` on the demo recipe is a tracked run in the experiment ``churn``: a
child run per candidate and, under the searched forest, one per search point, each with its
params, per-fold metrics over steps and fit timings equal to the report's, CV summaries, the
winner's holdout metrics, the data fingerprint and code version; the report is stored as the
run's artifacts; the registered version names the run and the run the version. A recipe,
option or data source refused before training records nothing; a training that fails after
its run started leaves it FAILED with the error."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mlharbor
from mlharbor.core.runs import Run, RunStatus
from mlharbor.settings import Settings
from mlharbor.tracking.store import TrackingStore
from tests.support import cli_env, run_cli

DEMO_RECIPE = Path(mlharbor.__file__).parent / "demo" / "recipe.yaml"


@dataclasses.dataclass
class Trained:
    settings: Settings
    env: dict[str, str]
    output: dict[str, Any]
    store: TrackingStore
    registry: Any


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    from mlharbor.bootstrap import open_registry

    settings = Settings(home=tmp_path_factory.mktemp("train-runs") / "home",
                        training={"n_jobs": 1})
    env = {**cli_env(settings), "MLHARBOR_TRAINING__N_JOBS": "1"}
    done = run_cli("train", str(DEMO_RECIPE), "--json", env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    registry = open_registry(settings)
    try:
        yield Trained(settings, env, json.loads(done.stdout), TrackingStore(registry.store.db),
                      registry)
    finally:
        registry.close()


def _children(store: TrackingStore, run: Run) -> dict[str, Run]:
    return {c.name: c for c in store.child_runs(run.run_id)}


def test_the_training_is_a_run_with_candidates_and_search_points(trained: Trained) -> None:
    store = trained.store
    run = store.get_run(trained.output["run_id"])
    assert store.get_experiment(run.experiment_id).name == "churn"
    assert run.status is RunStatus.FINISHED and run.parent_run_id is None
    version = trained.registry.get_version(trained.output["version"])
    report = version.lineage["evaluation"]
    assert run.tags["mlharbor.dataset.fingerprint"] == version.lineage["dataset"]["fingerprint"]
    # One commit, read once per training: the same in the run and the version.
    assert run.tags.get("mlflow.source.git.commit") == version.lineage["code_version"]
    assert run.params["winner"] == report["winner"] == trained.output["winner"]
    assert run.params["folds"] == "5" and run.params["primary_metric"] == "f1"
    assert run.metrics["f1"].value == pytest.approx(version.metrics["f1"])
    candidates = _children(store, run)
    assert set(candidates) == {"logistic", "forest"}
    forest, logistic = candidates["forest"], candidates["logistic"]
    assert forest.tags["mlharbor.settings_tried"] == "2"
    points = _children(store, forest)
    assert set(points) == {"forest max_depth=6", "forest max_depth=10"}
    assert points["forest max_depth=10"].params["max_depth"] == "10"
    assert points["forest max_depth=6"].params["n_estimators"] == "60"
    assert logistic.params["max_iter"] == "500" and not _children(store, logistic)
    every = [run, forest, logistic, *points.values()]
    assert all(r.status is RunStatus.FINISHED for r in every)
    assert all(r.tags["mlharbor.dataset.fingerprint"] == run.tags[
        "mlharbor.dataset.fingerprint"] for r in every)
    # The winner's holdout metrics are on its candidate run, as the version records them.
    winner = candidates[report["winner"]]
    assert winner.tags["mlharbor.winner"] == "true"
    assert winner.metrics["f1"].value == pytest.approx(report["holdout"]["metrics"]["f1"])


def test_per_fold_metrics_and_timings_equal_the_report(trained: Trained) -> None:
    store = trained.store
    run = store.get_run(trained.output["run_id"])
    report = trained.registry.get_version(trained.output["version"]).lineage["evaluation"]
    candidates = _children(store, run)
    by_name = {c["name"]: c for c in report["candidates"]}
    logistic = candidates["logistic"]
    folds = by_name["logistic"]["cv"]["folds"]
    history, _ = store.metric_history(logistic.run_id, "fold.f1")
    assert [p.step for p in history] == [f["fold"] for f in folds] == list(range(5))
    assert [p.value for p in history] == pytest.approx([f["f1"] for f in folds])
    seconds, _ = store.metric_history(logistic.run_id, "fold.fit_seconds")
    assert [round(p.value, 4) for p in seconds] == [f["fit_seconds"] for f in folds]
    assert logistic.metrics["fit_seconds"].value == pytest.approx(
        sum(p.value for p in seconds))
    assert logistic.metrics["cv.f1"].value == pytest.approx(by_name["logistic"]["cv"]["mean"]
                                                            ["f1"])
    # Each search point has its own folds; its CV mean is the report's search entry.
    search = {str(s["params"]["max_depth"]): s for s in by_name["forest"]["search"]}
    for name, point in _children(store, candidates["forest"]).items():
        depth = point.params["max_depth"]
        assert point.metrics["cv.f1"].value == pytest.approx(search[depth]["mean"]), name
        assert point.metrics["cv.f1.std"].value == pytest.approx(search[depth]["std"]), name
        assert len(store.metric_history(point.run_id, "fold.roc_auc")[0]) == 5


def test_the_report_is_stored_and_version_and_run_name_each_other(trained: Trained) -> None:
    from mlharbor.tracking.files import TrackingFiles, key_of_uri

    run = trained.store.get_run(trained.output["run_id"])
    version = trained.registry.get_version(trained.output["version"])
    assert run.tags["mlharbor.model_version"] == version.ref == "churn:1"
    assert version.tags["mlharbor.run_id"] == run.run_id
    assert version.lineage["tracking"]["run_id"] == run.run_id
    files = TrackingFiles(trained.store, trained.registry.artifacts)
    root = key_of_uri(run.artifact_uri)
    assert root is not None
    stored = {f.path.rsplit("/", 2)[-2] + "/" + f.path.rsplit("/", 1)[-1]: f
              for f in files.files_under(root)}
    assert set(stored) == {"report/report.json", "report/report.html"}
    assert all(len(f.sha256) == 64 and f.size > 0 for f in stored.values())
    listed = run_cli("runs", "list", "-e", "churn", "--json", env=trained.env)
    assert len(json.loads(listed.stdout)["runs"]) == 5


def _recipe(tmp_path: Path, **changes: Any) -> Path:
    import yaml

    recipe = yaml.safe_load(DEMO_RECIPE.read_text())
    recipe["data"]["path"] = str(DEMO_RECIPE.parent / "churn.csv")
    recipe["candidates"] = recipe["candidates"][:1]
    recipe.pop("slices", None)
    recipe["gates"] = []
    recipe["validation"] = {"holdout": 0.2, "folds": 2, "seed": 1, "bootstrap": 20}
    for key, value in changes.items():
        recipe[key] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _experiments(settings: Settings) -> set[str]:
    from mlharbor.bootstrap import open_registry

    registry = open_registry(settings)
    try:
        found, _ = TrackingStore(registry.store.db).list_experiments(view="all")
        return {e.name for e in found}
    finally:
        registry.close()


@pytest.mark.parametrize(("args", "changes", "code", "message"), [
    ((), {"candidates": [{"name": "x", "estimator": "sklearn.nope.Model"}]}, 2, "nope"),
    (("--backend", "spark"), {}, 2, "spark"),
    (("--experiment", "x" * 300), {}, 2, "experiment"),
    ((), {"data": {"path": "missing.csv", "target": "churn"}}, 3, "missing.csv"),
    ((), {"data": {"path": str(DEMO_RECIPE.parent / "churn.csv"), "target": "nope"}}, 2,
     "nope"),
])
def test_refused_before_training_records_nothing(settings: Settings, tmp_path: Path,
                                                 args: tuple[str, ...],
                                                 changes: dict[str, Any], code: int,
                                                 message: str) -> None:
    env = cli_env(settings)
    before = _experiments(settings)
    done = run_cli("train", str(_recipe(tmp_path, **changes)), *args, env=env)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert message in done.stderr and "Traceback" not in done.stderr
    assert _experiments(settings) == before


def test_a_failure_after_the_run_started_is_recorded_failed(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The candidates are fitted, then the registry is unreachable: the run and its finished
    children stay, the parent FAILED with the error; nothing is registered."""
    from mlharbor.bootstrap import open_registry
    from mlharbor.bootstrap.tracking import open_tracker
    from mlharbor.core.errors import NotFoundError, UnavailableError
    from mlharbor.pipelines import train_job
    from mlharbor.training.recipe import load_recipe

    def outage(*_args: Any, **_kwargs: Any) -> Any:
        raise UnavailableError("the metadata database is unreachable")

    monkeypatch.setattr(train_job, "register_outcome", outage)  # the seam is our own
    settings = settings.model_copy(update={"training": settings.training.model_copy(
        update={"n_jobs": 1})})
    registry = open_registry(settings)
    tracker = open_tracker(settings, registry=registry)
    started: list[str] = []

    def start(default: str) -> Any:
        run = tracker.start_run(experiment=f"{default}-failing", run_name="train")
        started.append(run.run_id)
        return run

    try:
        with pytest.raises(UnavailableError):
            train_job.train(load_recipe(_recipe(tmp_path)), registry=registry,
                            settings=settings, tracking=start)
        run = tracker.store.get_run(started[0])
        assert run.status is RunStatus.FAILED
        assert run.error == "UnavailableError: the metadata database is unreachable"
        children = tracker.store.child_runs(run.run_id)
        assert [c.name for c in children] == ["logistic"]
        assert children[0].status is RunStatus.FINISHED
        with pytest.raises(NotFoundError):
            registry.get_version("churn:1")
    finally:
        tracker.flusher.close()
        registry.close()
