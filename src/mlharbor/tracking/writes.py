"""The metric write path of :class:`~mlharbor.tracking.store.TrackingStore`, with its SQL
statements built once per dialect.

A training loop calling ``mlflow.log_metric`` per step makes one request, and so one write
transaction, per point: building SQLAlchemy statements (the latest-metric upsert with its
``excluded`` alias and ``WHERE``) cost more than running them, so they are built on first use
and reused (SQLAlchemy's compiled cache then skips compilation too). Writes stay one
transaction each, durable when the call returns (SQLite in WAL mode with
``synchronous=NORMAL``, PostgreSQL's commit).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, insert, or_, select

from mlharbor.core.runs import MetricPoint
from mlharbor.tracking import schema as t

if TYPE_CHECKING:
    from sqlalchemy import Connection


def dialect_insert(conn: Connection) -> Any:
    """The dialect's ``insert`` (with ``on_conflict_do_update``): PostgreSQL or SQLite."""
    return _insert_for(conn.dialect.name)


def _insert_for(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def run_stage(conn: Connection, run_id: str) -> str | None:
    """The lifecycle stage of run ``run_id`` (None: no such run), reading nothing else."""
    value = conn.execute(_run_stage(), {"run_id": run_id}).scalar()
    return None if value is None else str(value)


def write_metrics(conn: Connection, run_id: str, points: list[MetricPoint]) -> None:
    """Append ``points`` to the run's series and move its latest values forward."""
    conn.execute(_insert_metrics(), [
        {"run_id": run_id, "key": p.key, "value": None if math.isnan(p.value) else p.value,
         "timestamp": p.timestamp, "step": p.step} for p in points])
    latest: dict[str, MetricPoint] = {}
    for p in points:  # MLflow's order: the highest step, then time, then value wins
        best = latest.get(p.key)
        if best is None or rank(p) > rank(best):
            latest[p.key] = p
    conn.execute(_upsert_latest(conn.dialect.name), [
        {"run_id": run_id, "key": p.key, "value": None if math.isnan(p.value) else p.value,
         "timestamp": p.timestamp, "step": p.step} for p in latest.values()])


def rank(p: MetricPoint) -> tuple[int, int, bool, float]:
    """The order in which a point replaces another as a run's latest value of its key."""
    nan = math.isnan(p.value)
    return p.step, p.timestamp, not nan, -math.inf if nan else p.value


@functools.cache
def _run_stage() -> Any:
    return select(t.runs.c.lifecycle_stage).where(t.runs.c.run_id == bindparam("run_id"))


@functools.cache
def _insert_metrics() -> Any:
    return insert(t.metrics)


@functools.cache
def _upsert_latest(dialect: str) -> Any:
    stmt = _insert_for(dialect)(t.latest_metrics)
    cur, new = t.latest_metrics.c, stmt.excluded
    newer = or_(new.step > cur.step,
                and_(new.step == cur.step, new.timestamp > cur.timestamp),
                and_(new.step == cur.step, new.timestamp == cur.timestamp,
                     or_(cur.value.is_(None), new.value > cur.value)))
    return stmt.on_conflict_do_update(
        index_elements=["run_id", "key"],
        set_={"value": new.value, "timestamp": new.timestamp, "step": new.step},
        where=newer)
