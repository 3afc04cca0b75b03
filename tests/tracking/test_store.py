"""The tracking store on SQLite and PostgreSQL: runs, params written once, latest metrics,
history, search with filter and order over the latest values, paging, bad input writes
nothing, and the migration creates exactly the tracking tables."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from mlharbor.core.errors import ConflictError, InvalidInputError, NotFoundError
from mlharbor.core.runs import LifecycleStage, MetricPoint, RunStatus
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings
from mlharbor.tracking.search import TEXT_OPS, parse_field_filter
from mlharbor.tracking.store import TrackingStore


@pytest.fixture
def store(db_settings: Settings) -> Iterator[TrackingStore]:
    reg = Registry.from_settings(db_settings)
    yield TrackingStore(reg.store.db)
    reg.close()


def test_runs_params_metrics_and_search(store: TrackingStore) -> None:
    exp = store.create_experiment("tuning", tags={"team": "churn"})
    assert exp.artifact_location == f"mlflow-artifacts:/{exp.experiment_id}"
    with pytest.raises(ConflictError):
        store.create_experiment("tuning")
    ids = []
    for i, (model, auc) in enumerate([("rf", 0.9), ("lr", 0.7), ("rf", 0.8)]):
        run = store.create_run(exp.experiment_id, run_name=f"r{i}", start_time=1000 + i)
        store.log_batch(run.run_id, params={"model": model},
                        metrics=[MetricPoint("auc", auc - 0.1, 5, 0),
                                 MetricPoint("auc", auc, 6, 1)])
        ids.append(run.run_id)
    store.log_batch(ids[1], metrics=[MetricPoint("auc", math.nan, 7, 2)])
    page = store.search_runs([exp.experiment_id], filter="metrics.auc > 0.75 and "
                             "params.model = 'rf'", order_by=["metrics.auc DESC"])
    assert [r.name for r in page.runs] == ["r0", "r2"]
    assert page.runs[0].metrics["auc"] == MetricPoint("auc", 0.9, 6, 1)
    assert math.isnan(store.get_run(ids[1]).metrics["auc"].value)  # the highest step wins
    ordered = store.search_runs([exp.experiment_id], order_by=["metrics.auc ASC"]).runs
    assert [r.name for r in ordered] == ["r2", "r0", "r1"]  # NaN (no value) last
    first = store.search_runs([exp.experiment_id], max_results=2)
    assert [r.name for r in first.runs] == ["r2", "r1"] and first.next_page_token
    rest = store.search_runs([exp.experiment_id], max_results=2,
                             page_token=first.next_page_token)
    assert [r.name for r in rest.runs] == ["r0"] and rest.next_page_token is None
    points, more = store.metric_history(ids[0], "auc")
    assert [(p.step, p.value) for p in points] == [(0, pytest.approx(0.8)), (1, 0.9)]
    assert more is None
    with pytest.raises(ConflictError, match="cannot change"):
        store.log_batch(ids[0], params={"model": "xgb"})
    store.log_batch(ids[0], params={"model": "rf"})  # the same value again is fine
    done = store.update_run(ids[0], status=RunStatus.FAILED, error="ValueError: boom")
    assert done.status is RunStatus.FAILED and done.end_time and done.error
    store.set_run_lifecycle(ids[2], LifecycleStage.DELETED)
    assert len(store.search_runs([exp.experiment_id]).runs) == 2
    assert len(store.search_runs([exp.experiment_id], view="all").runs) == 3
    with pytest.raises(InvalidInputError, match="deleted"):
        store.log_batch(ids[2], params={"x": 1})


def test_nested_runs_and_bad_input_writes_nothing(store: TrackingStore) -> None:
    parent = store.create_run("0", run_name="parent")
    child = store.create_run("0", parent_run_id=parent.run_id)
    assert [r.run_id for r in store.child_runs(parent.run_id)] == [child.run_id]
    assert child.tags["mlflow.parentRunId"] == parent.run_id
    bad: list[dict[str, Any]] = [
        {"metrics": [MetricPoint("ok", 1.0, 1, 0), MetricPoint("../x", 1.0, 1, 0)]},
        {"metrics": [MetricPoint("ok", 1.0, -1, 0)]},
        {"params": {"ok": "1", "p" * 300: "x"}},
        {"tags": {"ok": "x" * 9000}},
        {"metrics": [MetricPoint("ok", 1.0, 1, 0)] * 1001},
    ]
    for kwargs in bad:
        with pytest.raises(InvalidInputError):
            store.log_batch(parent.run_id, **kwargs)
    run = store.get_run(parent.run_id)
    assert run.metrics == {} and run.params == {} and "ok" not in run.tags
    with pytest.raises(NotFoundError):
        store.create_run("424242")
    with pytest.raises(NotFoundError):
        store.get_run("f" * 32)
    with pytest.raises(InvalidInputError, match="run id"):
        store.get_run("nope")
    with pytest.raises(InvalidInputError, match="Invalid search filter"):
        store.search_runs(["0"], filter="metrics.x >> 1")
    with pytest.raises(InvalidInputError, match="page_token"):
        store.search_runs(["0"], page_token="garbage!")


def test_migration_creates_exactly_the_tracking_tables(db_settings: Settings) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from mlharbor.tracking.schema import metadata

    reg = Registry.from_settings(db_settings)
    try:
        with reg.store.db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        ours = set(metadata.tables)
        assert [d for d in diff if _table(d) in ours] == []
    finally:
        reg.close()


def _table(diff: Any) -> str | None:
    entry = diff[0] if isinstance(diff, list) else diff
    for part in entry[1:]:
        name = getattr(part, "name", None) if not isinstance(part, str) else None
        table = getattr(part, "table", None)
        if table is not None:
            return str(table.name)
        if name and entry[0] in ("add_table", "remove_table"):
            return str(name)
        if isinstance(part, str) and part.startswith("tracking_"):
            return part
    return None


def test_experiments_with_run_counts_in_one_query(store: TrackingStore) -> None:
    from sqlalchemy import event

    empty = store.create_experiment("empty")
    busy = store.create_experiment("busy")
    gone = store.create_experiment("gone")
    for _ in range(3):
        store.create_run(busy.experiment_id)
    deleted = store.create_run(busy.experiment_id)
    store.set_run_lifecycle(deleted.run_id, LifecycleStage.DELETED)  # still counted
    store.create_run(gone.experiment_id)
    store.set_experiment_lifecycle(gone.experiment_id, LifecycleStage.DELETED)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = store.db.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", count)
    try:
        found, more = store.list_experiments_with_counts()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert more is None
    assert {e.name: n for e, n in found} == {"Default": 0, "empty": 0, "busy": 4}
    assert [e.experiment_id for e, _n in found] == sorted(
        (e.experiment_id for e, _n in found), key=int)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert {e.name: n for e, n in store.list_experiments_with_counts(view="deleted")[0]} \
        == {"gone": 1}
    assert [(e.name, n) for e, n in store.list_experiments_with_counts(view="all",
                                                                        max_results=2)[0]] \
        == [("Default", 0), ("empty", 0)]
    assert store.count_runs(busy.experiment_id) == 4 and empty.name == "empty"


def test_a_metric_write_failing_midway_writes_nothing(store: TrackingStore) -> None:
    """The metric statements run on the transaction's own cursor: a driver error there comes
    out as the database layer's error, and the transaction's earlier statements roll back."""
    from sqlalchemy import text
    from sqlalchemy.exc import ProgrammingError

    from mlharbor.core.errors import UnavailableError

    run = store.create_run("0")
    store.log_batch(run.run_id, metrics=[MetricPoint("loss", 1.0, 1, 0)])
    with store.db.write() as conn:  # the latest-value table goes: its upsert will fail
        conn.execute(text("DROP TABLE tracking_latest_metrics"))
    with pytest.raises((UnavailableError, ProgrammingError)) as caught:
        store.log_batch(run.run_id, metrics=[MetricPoint("loss", 0.5, 2, 1),
                                             MetricPoint("acc", 0.9, 2, 1)])
    if store.db.dialect == "sqlite":
        assert isinstance(caught.value, UnavailableError)
        assert "no such table" in str(caught.value)
    points, _ = store.metric_history(run.run_id, "loss")
    assert [(p.step, p.value) for p in points] == [(0, 1.0)]  # the series insert rolled back



def test_a_filter_of_many_clauses_is_answered_or_refused_clearly(store: TrackingStore) -> None:
    """Each metric, param or tag clause is a join: up to the limit the filter is answered
    (both runs must pass every clause); past it the filter is refused as bad input, not
    "the metadata database is unavailable" (SQLite joins at most 64 tables: 64 clauses came
    back so) nor a PostgreSQL planner busy for minutes."""
    from mlharbor.tracking.query import MAX_KEYED_CLAUSES

    keys = [f"m{i}" for i in range(MAX_KEYED_CLAUSES - 1)]
    hit = store.create_run("0", run_name="hit")
    miss = store.create_run("0", run_name="miss")  # fails only the last clause
    store.log_batch(hit.run_id, metrics=[MetricPoint(k, 1.0, 1, 0) for k in keys],
                    params={"model": "rf"})
    store.log_batch(miss.run_id, metrics=[MetricPoint(k, 1.0, 1, 0) for k in keys],
                    params={"model": "lr"})
    clauses = [f"metrics.{k} > 0" for k in keys] + ["params.model = 'rf'",
                                                    "attributes.status = 'RUNNING'"]
    found = store.search_runs(["0"], filter=" and ".join(clauses),
                              order_by=["metrics.m0 DESC", "params.model"])
    assert [r.name for r in found.runs] == ["hit"]
    both = store.search_runs(["0"], filter=" and ".join(clauses[:-2]))
    assert sorted(r.name for r in both.runs) == ["hit", "miss"]
    for n in (MAX_KEYED_CLAUSES + 1, 64, 450):
        many = " and ".join(f"tags.t{i} != 'x'" for i in range(n))
        with pytest.raises(InvalidInputError, match=f"has {n} metric, param and tag clauses"):
            store.search_runs(["0"], filter=many)


def test_too_many_sort_keys_are_refused_as_bad_input(store: TrackingStore) -> None:
    """SQLite refuses 1,000+ ORDER BY terms (two per key): 501 sort keys came back as "the
    metadata database is unavailable"."""
    from mlharbor.tracking.query import MAX_ORDER_BY

    run = store.create_run("0")
    keys = [f"metrics.m{i} DESC" for i in range(MAX_ORDER_BY)]
    assert [r.run_id for r in store.search_runs(["0"], order_by=keys).runs] == [run.run_id]
    for n in (MAX_ORDER_BY + 1, 501, 3000):
        with pytest.raises(InvalidInputError, match=f"order_by names {n} keys"):
            store.search_runs(["0"], order_by=[f"metrics.m{i}" for i in range(n)])


def test_like_tells_case_apart_and_ilike_does_not_on_both_databases(
        store: TrackingStore) -> None:
    """MLflow's grammar: LIKE is case-sensitive, ILIKE is not. SQLite folds ASCII case in
    LIKE by default, so the same search used to answer differently on SQLite and PostgreSQL."""
    exp = store.create_experiment("Case-Study", tags={"team": "Growth"})
    store.create_experiment("case-study-2")
    lower = store.create_run(exp.experiment_id, run_name="lower")
    upper = store.create_run(exp.experiment_id, run_name="upper")
    store.log_batch(lower.run_id, params={"model": "rf"})
    store.log_batch(upper.run_id, params={"model": "RF"})

    def names(text: str) -> set[str]:
        return {r.name for r in store.search_runs([exp.experiment_id], filter=text).runs}

    assert names("params.model LIKE 'rf%'") == {"lower"}
    assert names("params.model LIKE 'R%'") == {"upper"}
    assert names("params.model ILIKE 'rf%'") == {"lower", "upper"}

    def experiments(text: str) -> list[str]:
        where = parse_field_filter(text, {"name": TEXT_OPS, "tags": TEXT_OPS},
                                   what="Experiments")
        return [e.name for e in store.list_experiments(where=where)[0]]

    assert experiments("name LIKE 'case%'") == ["case-study-2"]
    assert experiments("name ILIKE 'case%'") == ["Case-Study", "case-study-2"]
    assert experiments("tags.team = 'Growth'") == ["Case-Study"]
    store.create_experiment("noted", tags={"mlflow.note.content": "hi"})  # a dotted key
    assert experiments("tags.`mlflow.note.content` = 'hi'") == ["noted"]
    assert experiments("tags.team LIKE 'g%'") == []
    # an experiment without the tag matches nothing, != included (as in MLflow)
    assert experiments("tags.team != 'Growth'") == []
    assert experiments("name != 'Default' AND tags.team ILIKE 'g%'") == ["Case-Study"]
    # \_ is a literal underscore in LIKE (PostgreSQL's default escape, on both databases);
    # = compares the text as it is (on SQLite it was run as LIKE, so _ matched any character)
    store.create_experiment("my_exp")
    store.create_experiment("myXexp")
    assert experiments("name LIKE 'my\\_exp'") == ["my_exp"]
    assert experiments("name LIKE 'my_exp'") == ["my_exp", "myXexp"]
    assert experiments("name = 'my_exp'") == ["my_exp"]
    assert experiments("name ILIKE 'MY\\_EXP'") == ["my_exp"]
    store.log_batch(lower.run_id, params={"path": "a_b"})
    store.log_batch(upper.run_id, params={"path": "aXb"})
    assert names("params.path LIKE 'a\\_b'") == {"lower"}
    assert names("params.path ILIKE 'A\\_B'") == {"lower"}
