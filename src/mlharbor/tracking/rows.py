"""Database rows to tracking records, and the checks every write makes before it writes.

Shared by :mod:`mlharbor.tracking.experiments` and :mod:`mlharbor.tracking.store`: reading a
run row (or refusing a missing or deleted run), hydrating run rows with their params, tags and
latest metrics, the view (active, deleted, all) filter, and the checks of metric points and
tags, which raise :class:`InvalidInputError` naming the field before anything is written.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, bindparam, select

from mlharbor.core.errors import InvalidInputError, NotFoundError
from mlharbor.core.runs import Experiment, LifecycleStage, MetricPoint, Run, RunStatus
from mlharbor.tracking import checks, dbapi, writes
from mlharbor.tracking import schema as t

if TYPE_CHECKING:
    from sqlalchemy import Connection, RowMapping

_INT64 = 2**63
# Stored text -> enum member, looked up once per run of a (possibly large) search page.
STATUSES = {s.value: s for s in RunStatus}
STAGES = {s.value: s for s in LifecycleStage}
def run_row(conn: Connection, run_id: str) -> RowMapping:
    """Run ``run_id``'s row (NotFoundError if there is none)."""
    row = conn.execute(select(t.runs).where(t.runs.c.run_id == run_id)).mappings().first()
    if row is None:
        raise NotFoundError(f"No run with id {run_id!r}.", field="run_id")
    return row


def active_run(conn: Connection, run_id: str) -> RowMapping:
    """Run ``run_id``'s row, refusing a deleted run (it is restored before it changes)."""
    row = run_row(conn, run_id)
    if row["lifecycle_stage"] != LifecycleStage.ACTIVE.value:
        raise InvalidInputError(f"Run {run_id} is deleted; restore it to change it.",
                                field="run_id")
    return row


def check_active(conn: Connection, run_id: str) -> None:
    """NotFoundError for no such run, InvalidInputError for a deleted one (reads one column:
    the check every logging call makes)."""
    require_active(run_id, writes.run_stage(conn, run_id))


def require_active(run_id: str, stage: str | None) -> None:
    """:func:`check_active`'s refusals for a run read as ``stage`` (None: no such run)."""
    if stage is None:
        raise NotFoundError(f"No run with id {run_id!r}.", field="run_id")
    if stage != LifecycleStage.ACTIVE.value:
        raise InvalidInputError(f"Run {run_id} is deleted; restore it to change it.",
                                field="run_id")


def hydrate(conn: Connection, found: Sequence[RowMapping]) -> list[Run]:
    """Run records for run rows, with their params, tags and latest metric values: three
    reads per :data:`CHUNK` runs, whatever the number of runs, on the transaction's own
    cursor (:mod:`.dbapi`)."""
    if not found:
        return []
    ids = [r["run_id"] for r in found]
    params: dict[str, dict[str, str]] = {i: {} for i in ids}
    tags: dict[str, dict[str, str]] = {i: {} for i in ids}
    metrics: dict[str, dict[str, MetricPoint]] = {i: {} for i in ids}
    for table in (t.params, t.tags, t.latest_metrics):
        for run_id, key, *rest in by_run(conn, table, ids):
            if table is t.latest_metrics:
                value, timestamp, step = rest
                metrics[run_id][key] = MetricPoint(key, math.nan if value is None else value,
                                                   timestamp, step)
            else:
                (params if table is t.params else tags)[run_id][key] = rest[0]
    return [Run(run_id=r["run_id"], experiment_id=str(r["experiment_id"]), name=r["name"],
                status=STATUSES[r["status"]], start_time=r["start_time"],
                end_time=r["end_time"], lifecycle_stage=STAGES[r["lifecycle_stage"]],
                user_id=r["user_id"], artifact_uri=r["artifact_uri"],
                parent_run_id=r["parent_run_id"], metrics=metrics[r["run_id"]],
                params=params[r["run_id"]], tags=tags[r["run_id"]], error=r["error"])
            for r in found]


def by_run(conn: Connection, table: Table, run_ids: list[str]) -> Iterator[tuple[Any, ...]]:
    """``(run_id, key, value[, timestamp, step])`` of ``table``'s rows for ``run_ids``.

    One statement per size in :data:`_SIZES` (``run_id IN`` 1, 8, 64 or :data:`CHUNK`
    parameters), compiled once: a shorter list is padded with an id no run has."""
    for chunk in chunks(run_ids, CHUNK):
        size = next(n for n in _SIZES if n >= len(chunk))
        sql = dbapi.compiled(f"by_run_{table.name}_{size}",
                             functools.partial(_by_run, table, size), conn.dialect)
        values = dict(zip(_id_names()[:size], chunk + [""] * (size - len(chunk)),
                          strict=True))
        with dbapi.cursor(conn, sql) as cursor:
            cursor.execute(sql.text, sql.params(values))
            found = cursor.fetchall()
        yield from found


#: Run ids per IN (...) list: under SQLite's default limit of bound parameters.
CHUNK = 500
_SIZES = (1, 8, 64, CHUNK)


@functools.cache
def _id_names() -> tuple[str, ...]:
    return tuple(f"id{i}" for i in range(CHUNK))


def _by_run(table: Table, size: int) -> Any:
    columns = [c for c in table.c if c.name in ("run_id", "key", "value", "timestamp", "step")]
    return select(*columns).where(table.c.run_id.in_([bindparam(n) for n in
                                                      _id_names()[:size]]))


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def experiment(row: RowMapping) -> Experiment:
    """The experiment record of a ``tracking_experiments`` row."""
    return Experiment(experiment_id=str(row["id"]), name=row["name"],
                      artifact_location=row["artifact_location"],
                      lifecycle_stage=LifecycleStage(row["lifecycle_stage"]),
                      tags=dict(row["tags"] or {}), creation_time=row["creation_time"],
                      last_update_time=row["last_update_time"])


def check_point(point: Any, index: int) -> MetricPoint:
    """Metric point ``index`` of a batch, checked (and converted if it came unparsed)."""
    if not isinstance(point, MetricPoint):
        raise InvalidInputError(f"metrics[{index}] must be a MetricPoint; received "
                                f"{type(point).__name__}.", field=f"metrics[{index}]")
    if type(point.value) is float and type(point.timestamp) is int \
            and type(point.step) is int and 0 <= point.timestamp < _INT64 \
            and -_INT64 <= point.step < _INT64:
        # What the MLflow routes and the flusher hand over (already parsed): only the key is
        # left to check; the same rules as below, without converting anything.
        checks.check_key(point.key, field=f"metrics[{index}].key")
        return point
    return MetricPoint(
        checks.check_key(point.key, field=f"metrics[{index}].key"),
        checks.check_number(point.value, field=f"metrics[{index}].value"),
        checks.check_int(point.timestamp, field=f"metrics[{index}].timestamp", minimum=0),
        checks.check_int(point.step, field=f"metrics[{index}].step"))


def check_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tags as text, each key and value checked."""
    if not isinstance(tags, Mapping):
        raise InvalidInputError("tags must be a mapping of keys to text.", field="tags")
    return {checks.check_key(k, field="tags.key"): checks.check_text(
        v, field=f"tags.{k}", limit=checks.MAX_TAG_VALUE_CHARS) for k, v in tags.items()}


def run_name() -> str:
    """A readable name for a run started without one (``brave-otter-123``)."""
    adjectives = ("brave", "calm", "eager", "gentle", "keen", "lucky", "merry", "quiet",
                  "swift", "wise")
    nouns = ("otter", "harbor", "heron", "lynx", "maple", "pike", "raven", "tide", "wren")
    return f"{random.choice(adjectives)}-{random.choice(nouns)}-{random.randint(100, 999)}"


def lifecycle(q: Any, column: Any, view: str) -> Any:
    """``q`` narrowed to a view: active (the default), deleted or all."""
    view = (view or "active").lower().replace("_only", "")
    if view in ("active", "1"):
        return q.where(column == LifecycleStage.ACTIVE.value)
    if view in ("deleted", "2"):
        return q.where(column == LifecycleStage.DELETED.value)
    if view in ("all", "3"):
        return q
    raise InvalidInputError(f"view must be active, deleted or all; received {view[:40]!r}.",
                            field="run_view_type")


def upsert(conn: Connection, table: Any, values: list[dict[str, Any]], keys: tuple[str, ...],
           columns: tuple[str, ...]) -> None:
    """Insert ``values``, or update ``columns`` of rows whose ``keys`` already exist."""
    stmt = writes.dialect_insert(conn)(table)
    stmt = stmt.on_conflict_do_update(index_elements=list(keys),
                                      set_={c: stmt.excluded[c] for c in columns})
    conn.execute(stmt, values)
