"""A run's datasets and logged models, in and out (MLflow's log-inputs, log-outputs and
log-model), on SQLite and PostgreSQL: kept once each, read back as records, every entry
checked before anything is written, and rows of older versions read leniently."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import update

from mlharbor.core.errors import InvalidInputError, NotFoundError
from mlharbor.core.runs import DatasetInput, LifecycleStage, ModelOutput, RunIO
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from mlharbor.tracking import runio
from mlharbor.tracking import schema as t
from mlharbor.tracking.store import TrackingStore

TRAIN = DatasetInput("churn", "cc297ed2", "local", '{"uri": "train.csv"}', '{"mlflow_colspec": []}',
                     "", {"mlflow.data.context": "training"})


@pytest.fixture
def store(db_settings: Settings) -> Iterator[TrackingStore]:
    reg = Registry.from_settings(db_settings)
    yield TrackingStore(reg.store.db)
    reg.close()


def test_inputs_and_outputs_read_back_once_each(store: TrackingStore) -> None:
    run = store.create_run("0")
    assert store.get_run_io(run.run_id)[1] == RunIO([], [], [])
    store.record_io(run.run_id, datasets=[TRAIN], model_inputs=["m-base"])
    store.record_io(run.run_id, model_outputs=[ModelOutput("m-1", 0)])
    store.record_io(run.run_id, model_outputs=[ModelOutput("m-2", "7")])  # type: ignore[arg-type]
    store.record_io(run.run_id, mlmodels=['{"flavors": {}}'])
    # the same entries again (MLflow's client may log a dataset per fit): kept once
    store.record_io(run.run_id, datasets=[TRAIN], model_inputs=["m-base"],
                    model_outputs=[ModelOutput("m-1", 0)])
    got, io = store.get_run_io(run.run_id)
    assert got == store.get_run(run.run_id)
    assert io == RunIO([TRAIN], ["m-base"], [ModelOutput("m-1", 0), ModelOutput("m-2", 7)])
    # a dataset is kept once per name and digest, its first context kept (as MLflow does)
    store.record_io(run.run_id, datasets=[DatasetInput("churn", "cc297ed2", "local", "s", tags={
        "mlflow.data.context": "eval"})])
    assert store.get_run_io(run.run_id)[1].datasets == [TRAIN]


@pytest.mark.parametrize("kwargs", [
    {"datasets": [TRAIN, DatasetInput("", "d", "local", "s")]},
    {"datasets": [DatasetInput("n", "d" * 37, "local", "s")]},
    {"datasets": [DatasetInput("n", "d", "local", "s", profile="p" * 16_385)]},
    {"datasets": [DatasetInput("n", "d", "local", 3)]},  # type: ignore[arg-type]
    {"datasets": [DatasetInput("n", "d", "local", "s", tags={"../x": "y"})]},
    {"datasets": [DatasetInput("n", "d", "local", "s", tags={"k": "v" * 501})]},
    {"datasets": [TRAIN], "model_inputs": [""]},
    {"model_outputs": [ModelOutput("m-1", 0), ModelOutput("m-2", 1.5)]},  # type: ignore[arg-type]
    {"model_outputs": [ModelOutput("m\x00", 0)]},
    {"model_outputs": [ModelOutput("m-1", 2**63)]},
    {"mlmodels": ["x" * (runio.MAX_MLMODEL_CHARS + 1)]},
], ids=lambda kwargs: next(iter(kwargs)))
def test_bad_entries_are_refused_and_nothing_is_written(store: TrackingStore,
                                                        kwargs: dict[str, Any]) -> None:
    run = store.create_run("0")
    with pytest.raises(InvalidInputError) as caught:
        store.record_io(run.run_id, **kwargs)
    assert caught.value.details["field"]  # says which entry and field
    assert store.get_run_io(run.run_id)[1] == RunIO([], [], [])


def test_deleted_and_missing_runs_are_refused(store: TrackingStore) -> None:
    run = store.create_run("0")
    store.set_run_lifecycle(run.run_id, LifecycleStage.DELETED)
    with pytest.raises(InvalidInputError, match="deleted"):
        store.record_io(run.run_id, model_outputs=[ModelOutput("m-1")])
    with pytest.raises(NotFoundError):
        store.record_io("f" * 32, model_outputs=[ModelOutput("m-1")])
    with pytest.raises(NotFoundError):
        store.get_run_io("f" * 32)


def test_rows_of_older_versions_read_leniently(store: TrackingStore) -> None:
    run = store.create_run("0")
    # what earlier versions kept: the request's entries as sent, whatever their shape
    with store.db.write() as conn:
        conn.execute(update(t.runs).where(t.runs.c.run_id == run.run_id).values(
            inputs=[{"dataset": {"name": "old", "digest": 5}, "tags": "x"}, 7, {"model_id": 1},
                    {"model_id": "m-in"}],
            outputs=[{"mlmodel": "{}"}, {"model_id": "m-old", "step": "x"}, None]))
    io = store.get_run_io(run.run_id)[1]
    assert io == RunIO([DatasetInput("old", "", "", "")], ["m-in"], [ModelOutput("m-old", 0)])
    # an old row's dataset (fields missing, a number for its digest) is still the same
    # dataset when logged again; another digest is another dataset
    store.record_io(run.run_id, datasets=[DatasetInput("old", "5", "local", "s"),
                                          DatasetInput("old", "6", "local", "s")])
    assert [d.digest for d in store.get_run_io(run.run_id)[1].datasets] == ["", "6"]


def test_a_run_keeps_its_latest_entries_and_a_request_is_bounded(
        store: TrackingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runio, "MAX_OUTPUTS", 25)
    monkeypatch.setattr(runio, "MAX_NEW_ENTRIES", 10)
    run = store.create_run("0")
    outputs = [ModelOutput(f"m-{i}", i) for i in range(30)]
    for start in range(0, 30, 10):
        store.record_io(run.run_id, model_outputs=outputs[start:start + 10])
    assert store.get_run_io(run.run_id)[1].model_outputs == outputs[-25:]
    with pytest.raises(InvalidInputError, match="At most 10 models a request"):
        store.record_io(run.run_id, model_outputs=[ModelOutput("m-new")] * 11)
    assert store.get_run_io(run.run_id)[1].model_outputs == outputs[-25:]
