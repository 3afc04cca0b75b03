"""Training on a real Dask cluster (scheduler and worker processes on loopback): the same recipe
gives exactly the local run's metrics and winner, also when a worker is killed mid-search; the
backend is chosen by flag, recipe or settings, and every bad choice is a clear error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import mlharbor
from mlharbor.core.errors import ConfigError, InvalidInputError, UnavailableError
from mlharbor.pipelines.train_job import Progress, TrainingOutcome, run_training
from mlharbor.training.backend import choose_backend
from mlharbor.training.recipe import recipe_from_yaml
from tests.dask_cluster import dask_cluster
from tests.support import free_port

pytestmark = pytest.mark.xdist_group("dask")

CHURN = Path(mlharbor.__file__).parent / "demo" / "churn.csv"

RECIPE = """\
data: {path: churn.csv, target: churn, id_columns: [customer_id]}
candidates:
  - name: forest
    estimator: sklearn.ensemble.RandomForestClassifier
    params: {n_estimators: TREES}
    search: {method: grid, space: {max_depth: [3, 6], min_samples_leaf: [1, 5]}}
  - name: linear
    estimator: sklearn.linear_model.LogisticRegression
    params: {max_iter: 200}
validation: {holdout: 0.25, folds: 3, seed: 11, bootstrap: 50}
metrics: {primary: f1}
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("churn")
    pd.read_csv(CHURN).head(800).to_csv(folder / "churn.csv", index=False)
    return folder


def _recipe(folder: Path, trees: int = 10, extra: str = "") -> Any:
    text = RECIPE.replace("TREES", str(trees)) + extra
    return recipe_from_yaml(text, source="recipe.yaml", base_dir=folder)


def _without_timings(value: Any) -> Any:
    """The report minus what depends on the clock or the machine (seconds, the backend)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in ("fit_seconds", "compute", "dataset")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _assert_same_training(local: TrainingOutcome, remote: TrainingOutcome) -> None:
    assert remote.winner == local.winner
    assert remote.metrics == local.metrics  # holdout, every CV mean, std, baseline: exact
    for part in ("candidates", "cv", "holdout", "baseline", "winner_params"):
        assert _without_timings(remote.report[part]) == _without_timings(local.report[part]), part
    searched = next(c for c in remote.report["candidates"] if c["name"] == "forest")
    assert len(searched["search"]) == 4 and searched["settings_tried"] == 4


@pytest.fixture(scope="module")
def local_outcome(data_dir: Path) -> TrainingOutcome:
    return run_training(_recipe(data_dir), n_jobs=1)


def test_dask_run_equals_local_run(data_dir: Path, local_outcome: TrainingOutcome,
                                   dask_scheduler: str) -> None:
    class Recorder(Progress):
        def __init__(self) -> None:
            self.folds = 0
            self.notes: list[str] = []

        def advance(self, task: str, amount: int = 1) -> None:
            self.folds += amount if task == "folds" else 0

        def note(self, message: str) -> None:
            self.notes.append(message)

    progress = Recorder()
    remote = run_training(_recipe(data_dir), backend="dask", scheduler=dask_scheduler,
                          progress=progress)
    _assert_same_training(local_outcome, remote)
    assert progress.folds == (4 + 1 + 1) * 3  # settings + baseline, fold by fold
    assert any(f"Dask cluster at {dask_scheduler}" in n for n in progress.notes)
    assert remote.report["compute"] == {"backend": "dask", "workers": 2}
    assert local_outcome.report["compute"] == {"backend": "local", "workers": 1}


def test_recipe_section_selects_dask(data_dir: Path, local_outcome: TrainingOutcome,
                                     dask_scheduler: str) -> None:
    recipe = _recipe(data_dir, extra=f"training: {{backend: dask, scheduler: "
                                     f"'{dask_scheduler}'}}\n")
    remote = run_training(recipe)
    assert remote.report["compute"]["backend"] == "dask"
    _assert_same_training(local_outcome, remote)


def test_worker_killed_mid_search_is_retried_and_result_identical(
    data_dir: Path, tmp_path: Path
) -> None:
    recipe = _recipe(data_dir, trees=40)  # fits long enough to be running when killed
    local = run_training(recipe, n_jobs=1)
    with dask_cluster(tmp_path / "cluster", workers=2) as cluster:

        class KillWhileBusy(Progress):
            done = 0
            killed_at: int | None = None

            def advance(self, task: str, amount: int = 1) -> None:
                if task != "folds":
                    return
                self.done += amount
                if self.killed_at is None and _running_on(cluster.address, "w0"):
                    self.killed_at = self.done
                    cluster.kill_worker(0)  # SIGKILL, no goodbye: its running fit is lost

        progress = KillWhileBusy()
        remote = run_training(recipe, backend="dask", scheduler=cluster.address,
                              progress=progress)
        assert progress.killed_at is not None and progress.killed_at < 18, cluster.logs()
        assert progress.done == 18 and cluster.workers[0].poll() is not None
    _assert_same_training(local, remote)


def _running_on(address: str, name: str) -> bool:
    """Whether the scheduler has a task processing on the worker called ``name`` now."""
    from distributed import Client

    with Client(address, timeout=10) as client:
        names = {addr: w["name"] for addr, w in client.scheduler_info()["workers"].items()}
        return any(names.get(addr) == name and keys
                   for addr, keys in client.processing().items())


def test_unreachable_scheduler_fails_before_reading_data(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)  # tmp_path has no churn.csv: reading data would fail otherwise
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(UnavailableError) as caught:
        run_training(recipe, backend="dask", scheduler=address)
    assert f"cannot reach the Dask scheduler at {address}" in caught.value.message


@pytest.mark.parametrize(("extra", "expected"), [
    ("training: {backend: spark}\n",
     "recipe.yaml line 12, training.backend: Input should be 'local' or 'dask'"),
    ("training:\n  backend: dask\n  scheduler: 127.0.0.1:8786\n",
     "recipe.yaml line 14, training.scheduler: the Dask scheduler address must look like "
     "tcp://HOST:PORT"),
    ("training: {backend: local, scheduler: 'tcp://127.0.0.1:8786'}\n",
     "recipe.yaml line 12, training: a `scheduler` is only used with `backend: dask`"),
    ("training: {workers: 3}\n", "recipe.yaml line 12, training.workers: unknown field"),
])
def test_bad_training_section_is_a_line_numbered_error(
    data_dir: Path, extra: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _recipe(data_dir, extra=extra)
    assert expected in caught.value.message


def test_choice_order_flag_then_recipe_then_settings(data_dir: Path) -> None:
    plain = _recipe(data_dir)
    on_dask = _recipe(data_dir, extra="training: {backend: dask, scheduler: 'tcp://a:1'}\n")
    assert choose_backend(plain) == ("local", None)
    assert choose_backend(plain, default_backend="dask", default_scheduler="tcp://s:2") == (
        "dask", "tcp://s:2")
    assert choose_backend(on_dask, default_backend="local") == ("dask", "tcp://a:1")
    assert choose_backend(on_dask, "local") == ("local", None)  # the flag wins
    assert choose_backend(on_dask, scheduler="tcp://b:3") == ("dask", "tcp://b:3")
    assert choose_backend(plain, scheduler="tcp://b:3") == ("dask", "tcp://b:3")  # implies dask
    with pytest.raises(InvalidInputError, match="unknown compute engine 'spark'"):
        choose_backend(plain, "spark")
    with pytest.raises(InvalidInputError, match="only used with the dask backend"):
        choose_backend(on_dask, "local", "tcp://b:3")
    with pytest.raises(InvalidInputError, match="needs the address of a running Dask") as c:
        choose_backend(plain, "dask")
    assert "MLHARBOR_TRAINING__SCHEDULER" in (c.value.hint or "")
    with pytest.raises(InvalidInputError, match="must look like tcp://HOST:PORT"):
        choose_backend(plain, "dask", "http://x:1")


def test_dask_not_installed_says_how_to_install(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(InvalidInputError) as caught:
        run_training(_recipe(data_dir), backend="dask", scheduler="tcp://127.0.0.1:1")
    assert "pip install 'mlharbor[dask]'" in str(caught.value.hint)
