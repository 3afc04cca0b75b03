"""Metric writes leave SQLite's WAL checkpoints to the checkpoint thread: the log still gets
copied back and starts over (it stays bounded), pooled connections get their own
``wal_autocheckpoint`` back, a refused batch still writes nothing, and a disposed database
goes back to SQLite's own checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlharbor.core.errors import InvalidInputError
from mlharbor.core.runs import MetricPoint
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from mlharbor.tracking import checkpoint
from mlharbor.tracking.store import TrackingStore
from tests.support import wait_until


def _batch(step: int, keys: int = 100) -> list[MetricPoint]:
    return [MetricPoint(f"k{k}", step + k / 1000, 1_700_000_000_000 + step, step)
            for k in range(keys)]


def _wal(settings: Settings) -> Path:
    return Path(f"{settings.home / 'mlharbor.db'}-wal")


def test_metric_writes_checkpoint_on_the_thread_and_the_log_stays_bounded(
        reg: Registry, settings: Settings) -> None:
    store = TrackingStore(reg.store.db)
    run = store.create_run(store.create_experiment("e").experiment_id)
    for step in range(400):  # ~13 pages a batch: past RESTART_PAGES in all
        store.log_batch(run.run_id, metrics=_batch(step))
    found = checkpoint.for_engine(reg.store.db.engine)
    assert found is not None
    wait_until(lambda: found.checkpoints >= 1, 60, "a checkpoint on the thread")
    steps = iter(range(400, 1000))

    def started_over() -> bool:
        # A checkpoint now (one running on the thread meanwhile leaves this one incomplete,
        # then the next try), then a write: after a complete checkpoint it starts the log over.
        found.checkpoint()
        store.log_batch(run.run_id, metrics=_batch(next(steps)))
        # The WAL header's checkpoint sequence counts the times the log started over.
        return int.from_bytes(_wal(settings).read_bytes()[12:16], "big") > 0

    wait_until(started_over, 60, "the log starting over", interval=0.1)
    written = next(steps)
    points = store.metric_history(run.run_id, "k7", max_results=1000)[0]
    assert [p.step for p in points] == list(range(written))
    with reg.store.db.read() as conn:  # the pooled connection's own setting came back
        raw = conn.connection.driver_connection
        assert raw is not None
        assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000


def test_a_refused_batch_writes_nothing_and_restores_the_connection(reg: Registry) -> None:
    store = TrackingStore(reg.store.db)
    run = store.create_run(store.create_experiment("e").experiment_id)
    with pytest.raises(InvalidInputError):
        store.log_batch(run.run_id, metrics=[MetricPoint("ok", 1.0, 1, 0)],
                        params={"p": "x" * 10_000_000})
    assert store.metric_history(run.run_id, "ok")[0] == []
    with reg.store.db.read() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000


def test_after_dispose_sqlite_checkpoints_itself(settings: Settings) -> None:
    reg = Registry.from_settings(settings)
    store = TrackingStore(reg.store.db)
    run = store.create_run(store.create_experiment("e").experiment_id)
    store.log_batch(run.run_id, metrics=_batch(0))
    found = checkpoint.for_engine(reg.store.db.engine)
    assert found is not None
    reg.close()
    store.log_batch(run.run_id, metrics=_batch(1))  # the engine reconnects
    with reg.store.db.write() as conn:
        found.defer(conn)  # a no-op once disposed
        raw = conn.connection.driver_connection
        assert raw is not None
        assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    reg.close()


def test_checkpoints_follow_the_pages_the_log_really_grew_by(reg: Registry) -> None:
    store = TrackingStore(reg.store.db)
    run = store.create_run(store.create_experiment("e").experiment_id)
    found = checkpoint.for_engine(reg.store.db.engine)
    assert found is not None
    for step in range(300):  # ~13 pages a batch here, not the first estimate's ~200
        store.log_batch(run.run_id, metrics=_batch(step))
    wait_until(lambda: found.checkpoints >= 1, 60, "a checkpoint on the thread")
    # The first estimate asks for one every ~5 batches; measured, every ~75: a fixed
    # estimate would have asked ~60 times in 300 batches.
    assert found.checkpoints <= 12
    assert 0.01 <= found._per_point < 0.5
