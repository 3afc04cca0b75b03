"""Metric writes that never wait (``TrackingStore.log_metrics_nowait``, mlharbor.tracking.quick):
whatever they take they record exactly as ``log_batch`` would, they refuse what it refuses with
the same error, and whenever they would have to wait (another writer holds the database) or
hit any other database error they write nothing and say so, leaving the write to
``log_batch``. Only a SQLite file takes them."""

from __future__ import annotations

import math
import sqlite3
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from mlharbor.core.errors import ConflictError, InvalidInputError, MlharborError, NotFoundError
from mlharbor.core.runs import LifecycleStage, MetricPoint
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from mlharbor.tracking import checkpoint, quick
from mlharbor.tracking.store import TrackingStore
from tests.support import wait_until


@pytest.fixture
def store(reg: Registry) -> TrackingStore:
    return TrackingStore(reg.store.db)


def _path(settings: Settings) -> str:
    path = make_url(settings.database_url_value).database
    assert path
    return path


def _state(store: TrackingStore, run_id: str) -> tuple[Any, ...]:
    """Everything a run's metrics are: each key's history and its latest value (NaN as a
    string, so states compare equal)."""
    run = store.get_run(run_id)
    history = {key: [(p.value if not math.isnan(p.value) else "nan", p.timestamp, p.step)
                     for p in store.metric_history(run_id, key)[0]] for key in run.metrics}
    latest = {k: (p.value if not math.isnan(p.value) else "nan", p.timestamp, p.step)
              for k, p in run.metrics.items()}
    return history, latest


_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(-10, 10).map(float))
_points = st.builds(MetricPoint, st.sampled_from(["loss", "acc", "lr/0", "bad key?"]),
                    _values, st.integers(0, 5), st.integers(-3, 3))
_batches = st.lists(st.lists(_points, min_size=1, max_size=quick.MAX_POINTS), max_size=6)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=_batches)
def test_the_quick_path_records_and_refuses_exactly_as_log_batch(
        store: TrackingStore, batches: list[list[MetricPoint]]) -> None:
    exp = store.create_experiment(f"e{id(batches)}-{len(store.list_experiments()[0])}")
    quick_run = store.create_run(exp.experiment_id).run_id
    slow_run = store.create_run(exp.experiment_id).run_id
    valid = taken = 0
    for batch in batches:
        try:
            store.log_batch(slow_run, metrics=batch)
            refused: str | None = None
            valid += 1
        except MlharborError as exc:
            refused = f"{type(exc).__name__}: {exc.message}"
        try:
            if store.log_metrics_nowait(quick_run, batch):
                taken += 1
            else:
                # Nothing written: the checkpoint thread held the database for a moment (its
                # commits come every ~200 here). The regular path, as a route takes it.
                store.log_batch(quick_run, metrics=batch)
            assert refused is None, "the quick path took what log_batch refuses"
        except MlharborError as exc:
            assert refused == f"{type(exc).__name__}: {exc.message}"
    assert taken >= valid - 1  # the quick path took (nearly) every batch it may
    assert _state(store, quick_run) == _state(store, slow_run)


def test_missing_and_deleted_runs_are_refused_as_log_batch_refuses_them(
        store: TrackingStore) -> None:
    exp = store.create_experiment("refusals")
    run = store.create_run(exp.experiment_id).run_id
    point = [MetricPoint("loss", 1.0, 1, 0)]
    missing = "f" * 32
    with pytest.raises(NotFoundError, match="No run with id"):
        store.log_batch(missing, metrics=point)
    with pytest.raises(NotFoundError, match="No run with id"):
        store.log_metrics_nowait(missing, point)
    store.set_run_lifecycle(run, LifecycleStage.DELETED)
    with pytest.raises(InvalidInputError, match="is deleted"):
        store.log_metrics_nowait(run, point)
    store.set_run_lifecycle(run, LifecycleStage.ACTIVE)
    assert store.get_run(run).metrics == {}  # nothing was written by the refusals


def test_a_held_database_is_not_waited_for(store: TrackingStore, settings: Settings) -> None:
    run = store.create_run(store.create_experiment("held").experiment_id).run_id
    other = sqlite3.connect(_path(settings), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the database's one write lock
    try:
        # No wait (the busy timeout is 0): False at once, nothing written.
        assert store.log_metrics_nowait(run, [MetricPoint("loss", 1.0, 1, 0)]) is False
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.get_run(run).metrics == {}
    assert store.log_metrics_nowait(run, [MetricPoint("loss", 2.0, 2, 1)]) is True
    assert store.get_run(run).metrics["loss"].value == 2.0


def test_any_other_database_error_writes_nothing_and_leaves_it_to_log_batch(
        store: TrackingStore, settings: Settings) -> None:
    run = store.create_run(store.create_experiment("broken").experiment_id).run_id
    with sqlite3.connect(_path(settings)) as con:
        con.execute("CREATE TRIGGER refuse_points BEFORE INSERT ON tracking_metrics "
                    "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END")
    points = [MetricPoint("loss", 1.0, 1, 0), MetricPoint("acc", 0.5, 1, 0)]
    assert store.log_metrics_nowait(run, points) is False
    assert store.get_run(run).metrics == {}
    with pytest.raises(ConflictError):  # the regular path reports it as every write does
        store.log_batch(run, metrics=points)
    with sqlite3.connect(_path(settings)) as con:
        con.execute("DROP TRIGGER refuse_points")
    assert store.log_metrics_nowait(run, points) is True  # the connection was left usable
    assert set(store.get_run(run).metrics) == {"loss", "acc"}


def test_larger_batches_are_left_to_log_batch(store: TrackingStore) -> None:
    run = store.create_run(store.create_experiment("large").experiment_id).run_id
    many = [MetricPoint(f"k{i}", float(i), 1, 0) for i in range(quick.MAX_POINTS + 1)]
    assert store.log_metrics_nowait(run, many) is False
    assert store.log_metrics_nowait(run, []) is False
    assert store.get_run(run).metrics == {}


def test_only_a_sqlite_file_takes_quick_writes(db_settings: Settings) -> None:
    registry = Registry.from_settings(db_settings)
    try:
        store = TrackingStore(registry.store.db)
        run = store.create_run(store.create_experiment("where").experiment_id).run_id
        done = store.log_metrics_nowait(run, [MetricPoint("loss", 1.0, 1, 0)])
        assert done is registry.store.db.is_sqlite
        if not done:  # PostgreSQL: nothing written, log_batch does it
            assert store.get_run(run).metrics == {}
            store.log_batch(run, metrics=[MetricPoint("loss", 1.0, 1, 0)])
        assert store.get_run(run).metrics["loss"].value == 1.0
    finally:
        registry.close()


def test_quick_commits_leave_their_checkpoints_to_the_checkpoint_thread(
        reg: Registry, store: TrackingStore) -> None:
    run = store.create_run(store.create_experiment("wal").experiment_id).run_id
    engine = reg.store.db.engine
    writer = quick.for_engine(engine)
    checkpointer = checkpoint.for_engine(engine)
    assert writer is not None and checkpointer is not None
    before = checkpointer.checkpoints
    for step in range(400):  # ~5 pages each by the estimate: past PAGES, a checkpoint
        point = [MetricPoint("loss", 1.0, step, step)]
        # The checkpoint thread's own write (starting the log over) may hold the database
        # for a moment: the quick write then leaves the point to log_batch, as a route does.
        if not store.log_metrics_nowait(run, point):
            store.log_batch(run, metrics=point)
    wait_until(lambda: checkpointer.checkpoints > before, 30, "a checkpoint on the thread")
    assert writer.writes >= 300
    assert len(store.metric_history(run, "loss")[0]) == 400
    local = writer._local.conn.raw  # this thread's quick connection checkpoints nothing
    assert local.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert local.execute("PRAGMA busy_timeout").fetchone()[0] == 0


def test_after_dispose_quick_writes_stop_and_their_connections_close(
        settings: Settings) -> None:
    registry = Registry.from_settings(settings)
    store = TrackingStore(registry.store.db)
    run = store.create_run(store.create_experiment("gone").experiment_id).run_id
    assert store.log_metrics_nowait(run, [MetricPoint("loss", 1.0, 1, 0)])
    writer = quick.for_engine(registry.store.db.engine)
    assert writer is not None
    held = writer._local.conn.raw
    registry.close()
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        held.execute("SELECT 1")
    assert store.log_metrics_nowait(run, [MetricPoint("loss", 2.0, 2, 1)]) is False


def _log_generation(settings: Settings) -> int:
    """The WAL header's checkpoint sequence: it moves each time the log starts over (the
    write that starts it over syncs the new header)."""
    from pathlib import Path

    with Path(_path(settings) + "-wal").open("rb") as wal:
        return int.from_bytes(wal.read(16)[12:16], "big")


def test_the_log_starts_over_on_the_checkpoint_thread_not_in_a_quick_write(
        reg: Registry, store: TrackingStore, settings: Settings) -> None:
    """After a checkpoint that caught the log up, the first write starts the log over and
    syncs its header: the checkpointer makes that write itself, so the next quick write, on
    the event loop in a server, only appends (found in review: it synced the log and its
    folder otherwise)."""
    run = store.create_run(store.create_experiment("restart").experiment_id).run_id
    checkpointer = checkpoint.for_engine(reg.store.db.engine)
    assert checkpointer is not None
    for step in range(20):
        assert store.log_metrics_nowait(run, [MetricPoint("loss", 1.0, step, step)])
    before = _log_generation(settings)
    checkpointer.checkpoint()  # catches the log up (nothing else reads or writes)
    started_over = _log_generation(settings)
    assert started_over == before + 1
    assert store.log_metrics_nowait(run, [MetricPoint("loss", 1.0, 20, 20)])
    assert _log_generation(settings) == started_over  # appended, not started over
    assert len(store.metric_history(run, "loss")[0]) == 21


def test_a_forked_child_leaves_every_write_to_the_regular_path(
        reg: Registry, store: TrackingStore) -> None:
    """SQLite's locks and shared memory must not cross a fork: in a child the quick writer
    writes nothing, opens nothing and closes none of the parent's connections (not even when
    the child disposes the engine it inherited, as SQLAlchemy asks)."""
    import os

    run = store.create_run(store.create_experiment("fork").experiment_id).run_id
    assert store.log_metrics_nowait(run, [MetricPoint("loss", 1.0, 0, 0)])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        try:
            took = store.log_metrics_nowait(run, [MetricPoint("loss", 2.0, 1, 1)])
            reg.store.db.engine.dispose(close=False)
            os.write(write, b"took" if took else b"left")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"left"
    # The parent's connection is open and its writes go on.
    assert store.log_metrics_nowait(run, [MetricPoint("loss", 3.0, 2, 2)])
    assert [p.step for p in store.metric_history(run, "loss")[0]] == [0, 2]


def test_a_relative_database_url_names_one_file_for_every_connection(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database layer makes a SQLite path absolute once, so the quick writer's own
    connections (opened later, maybe after the working folder changed) open the very file
    the pool does (found in review: they would have opened, or made, another)."""
    import threading

    monkeypatch.chdir(tmp_path)
    registry = Registry.from_settings(Settings(home=tmp_path / "home",
                                               database_url="sqlite:///rel/meta.db"))
    try:
        store = TrackingStore(registry.store.db)
        run = store.create_run(store.create_experiment("rel").experiment_id).run_id
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        took: list[bool] = []
        thread = threading.Thread(target=lambda: took.append(store.log_metrics_nowait(
            run, [MetricPoint("loss", 1.0, 1, 0)])))  # a new thread: a new connection
        thread.start()
        thread.join(30)
        assert took == [True]
        assert store.get_run(run).metrics["loss"].value == 1.0
        assert not (tmp_path / "elsewhere" / "rel").exists()
    finally:
        registry.close()
