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


def no_run(run_id: str) -> NotFoundError:
    """The error for a run id no run has (every read and write says it the same way)."""
    return NotFoundError(f"No run with id {run_id!r}.", field="run_id")


def run_row(conn: Connection, run_id: str) -> RowMapping:
    """Run ``run_id``'s row (NotFoundError if there is none)."""
    row = conn.execute(select(t.runs).where(t.runs.c.run_id == run_id)).mappings().first()
    if row is None:
        raise no_run(run_id)
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
        raise no_run(run_id)
    if stage != LifecycleStage.ACTIVE.value:
        raise InvalidInputError(f"Run {run_id} is deleted; restore it to change it.",
                                field="run_id")


#: The columns a run record is built from, in the order :func:`hydrate` reads them: every
#: column but ``inputs`` and ``outputs`` (what MLflow's log-inputs sent, which can be large).
RUN_COLUMNS = tuple(t.runs.c[name] for name in (
    "run_id", "experiment_id", "name", "status", "start_time", "end_time", "lifecycle_stage",
    "user_id", "artifact_uri", "parent_run_id", "error"))


def run_record(conn: Connection, run_id: str) -> Run:
    """Run ``run_id`` with its params, tags and latest metrics (NotFoundError if none)."""
    row = conn.execute(select(*RUN_COLUMNS).where(t.runs.c.run_id == run_id)).first()
    if row is None:
        raise no_run(run_id)
    return hydrate(conn, [row])[0]


def hydrate(conn: Connection, found: Sequence[Sequence[Any]]) -> list[Run]:
    """Run records for run rows (each the values of :data:`RUN_COLUMNS`, in order), with
    their params, tags and latest metric values: three reads per :data:`CHUNK` runs,
    whatever the number of runs, on the transaction's own cursor (:mod:`.dbapi`).

    A search page may hold 50,000 runs, so the loops stay plain: one per table, rows
    unpacked as they come, each record built once with its fields in order."""
    if not found:
        return []
    ids = [r[0] for r in found]
    params: dict[str, dict[str, str]] = {i: {} for i in ids}
    tags: dict[str, dict[str, str]] = {i: {} for i in ids}
    metrics: dict[str, dict[str, MetricPoint]] = {i: {} for i in ids}
    for run_id, key, value in by_run(conn, t.params, ids):
        params[run_id][key] = value
    for run_id, key, value in by_run(conn, t.tags, ids):
        tags[run_id][key] = value
    nan = math.nan
    for run_id, key, number, timestamp, step in by_run(conn, t.latest_metrics, ids):
        metrics[run_id][key] = MetricPoint(key, nan if number is None else number,
                                           timestamp, step)
    statuses, stages = STATUSES, STAGES
    return [Run(run_id, str(experiment_id), name, statuses[status], start_time, end_time,
                stages[stage], user_id, artifact_uri, parent_run_id, metrics[run_id],
                params[run_id], tags[run_id], error)
            for (run_id, experiment_id, name, status, start_time, end_time, stage, user_id,
                 artifact_uri, parent_run_id, error) in found]


def by_run(conn: Connection, table: Table, run_ids: list[str]) -> Iterator[tuple[Any, ...]]:
    """``(run_id, key, value[, timestamp, step])`` of ``table``'s rows for ``run_ids``.

    One statement per size in :data:`_SIZES` (``run_id IN`` 1, 8, 64 or :data:`CHUNK`
    parameters), compiled once: a shorter list is padded with an id no run has."""
    for chunk in chunks(run_ids, CHUNK):
        size = next(n for n in _SIZES if n >= len(chunk))
        sql = dbapi.compiled(f"by_run_{table.name}_{size}",
                             functools.partial(_by_run, table, size), conn.dialect)
        padded = tuple(chunk) + ("",) * (size - len(chunk))
        with dbapi.cursor(conn, sql) as cursor:
            cursor.execute(sql.text, sql.rows(_id_names()[:size], [padded])[0])
            found = cursor.fetchall()
        yield from found


#: Run ids per IN (...) list: under SQLite's default limit of bound parameters.
CHUNK = 500
_SIZES = (1, 8, 64, CHUNK)


@functools.cache
def _id_names() -> tuple[str, ...]:
    return tuple(f"id{i}" for i in range(CHUNK))


def _by_run(table: Table, size: int) -> Any:
    columns = [table.c[n] for n in ("run_id", "key", "value", "timestamp", "step")
               if n in table.c]
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
