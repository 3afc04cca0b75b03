"""Search clauses (:mod:`mlharbor.tracking.search`) compiled to one SQL query over runs.

A metric clause is a join to ``tracking_latest_metrics`` on the run, the key and the
comparison (at most one row per run and key: its primary key), a param or tag clause the
same on its table, an attribute clause a column comparison, so the database answers the
whole filter, sort and page in one statement. Written as a join rather than ``run_id IN
(subquery)``, SQLite's planner can start from the (key, value) index and look the few
matching runs up by id; with ``IN`` it walked every run of the experiments and probed the
list (900 hits of 10,000 runs: ~8 ms instead of ~17-27 ms on a loaded machine). A filter
holds at most :data:`MAX_KEYED_CLAUSES` such clauses: SQLite joins at most 64 tables in one
statement (past that a valid filter came back as "the metadata database is unavailable"), and
PostgreSQL's planner time grows steeply with them (100 clauses: seconds, as subqueries too;
450: minutes). Only the
columns a run record needs are read (not what MLflow's log-inputs sent, which can be large
JSON). Sorting by a metric, param or tag puts runs without it last, in either direction, as
MLflow does; at most :data:`MAX_ORDER_BY` sort keys (past ~500 SQLite refused the statement,
which came back as "the metadata database is unavailable").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Select, and_, bindparam, func, literal, select

from mlharbor.core.errors import InvalidInputError
from mlharbor.tracking import dbapi, rows
from mlharbor.tracking import schema as t
from mlharbor.tracking.search import OrderBy, parse_filter, parse_order_by

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

#: The bound parameters a compiled search takes for its page (:func:`search_sql`).
PAGE_LIMIT, PAGE_OFFSET = "page_limit", "page_offset"
_ATTRIBUTE_COLUMNS = {
    "status": t.runs.c.status, "run_name": t.runs.c.name, "run_id": t.runs.c.run_id,
    "user_id": t.runs.c.user_id, "artifact_uri": t.runs.c.artifact_uri,
    "lifecycle_stage": t.runs.c.lifecycle_stage, "start_time": t.runs.c.start_time,
    "created": t.runs.c.start_time, "end_time": t.runs.c.end_time,
}
_KEYED = {"metric": t.latest_metrics, "param": t.params, "tag": t.tags}
#: Metric, param and tag clauses a filter may hold (each is a join; SQLite allows 64 a query).
MAX_KEYED_CLAUSES = 50
#: Sort keys a search may name (SQLite refuses 1,000+ ORDER BY terms: each key makes two).
MAX_ORDER_BY = 20


def run_query(experiment_ids: list[int], filter: str | None,
              order_by: list[str] | None) -> Select[Any]:
    """The run rows (:data:`~.rows.RUN_COLUMNS`) for the experiments, filter and order (no limit:
    the caller pages)."""
    q = select(*rows.RUN_COLUMNS).where(t.runs.c.experiment_id.in_(experiment_ids))
    clauses = parse_filter(filter)
    keyed = sum(1 for c in clauses if c.kind != "attribute")
    if keyed > MAX_KEYED_CLAUSES:
        raise InvalidInputError(
            f"The search filter has {keyed} metric, param and tag clauses; at most "
            f"{MAX_KEYED_CLAUSES} are supported.",
            hint="Filter on the few keys that narrow the runs, and compare the rest in the "
            "runs found.", field="filter")
    for i, clause in enumerate(clauses):
        if clause.kind == "attribute":
            q = q.where(compare(_ATTRIBUTE_COLUMNS[clause.key], clause.op, clause.value))
            continue
        table = _KEYED[clause.kind].alias(f"filter_{i}")
        q = q.join(table, and_(table.c.run_id == t.runs.c.run_id, table.c.key == clause.key,
                               compare(table.c.value, clause.op, clause.value)))
    orders = parse_order_by(order_by)
    if len(orders) > MAX_ORDER_BY:
        raise InvalidInputError(f"order_by names {len(orders)} keys; at most {MAX_ORDER_BY} "
                                "are supported.", field="order_by")
    for order in orders:
        q = _order(q, order)
    return q.order_by(t.runs.c.start_time.desc(), t.runs.c.run_id)


def search_sql(dialect: Dialect, experiment_ids: Sequence[int], filter: str | None,
               order_by: Sequence[Any] | None, view: str) -> tuple[dbapi.Sql, dict[str, Any]]:
    """A search (:func:`run_query` in ``view``) compiled for ``dialect``, and the values of
    its parameters but :data:`PAGE_LIMIT` and :data:`PAGE_OFFSET`, which the caller adds.

    Run on the DBAPI cursor, as the hot reads of :mod:`.dbapi` are: for 900 rows of 10,000
    runs, building, compiling and reading the statement through SQLAlchemy's result rows
    took as long again as SQLite's own work. The last :data:`_CACHED` searches stay compiled
    (a dashboard or a training script repeats the same few)."""
    order = None if order_by is None else list(order_by)
    ids = tuple(experiment_ids)
    if _cacheable(ids, filter, order, view):
        return _cached_search_sql(dialect, ids, filter, None if order is None else tuple(order),
                                  view)
    return _search_sql(dialect, ids, filter, order, view)  # or refused, as bad input


#: Searches kept compiled, and the most text one may hold to be kept (a key holds its
#: filter, sort keys and experiment ids; a longer search is compiled each time).
_CACHED = 256
_CACHED_TEXT = 4096
_CACHED_IDS = 64


def _cacheable(ids: tuple[int, ...], filter: Any, order: list[Any] | None, view: Any) -> bool:
    return (isinstance(filter, str | None) and isinstance(view, str) and len(ids) <= _CACHED_IDS
            and (order is None or all(isinstance(o, str) for o in order))
            and len(filter or "") + sum(len(o) for o in order or ()) + len(view)
            <= _CACHED_TEXT)


def _search_sql(dialect: Dialect, experiment_ids: tuple[int, ...], filter: str | None,
                order_by: Sequence[Any] | None, view: str) -> tuple[dbapi.Sql, dict[str, Any]]:
    q = rows.lifecycle(run_query(list(experiment_ids), filter,
                                 None if order_by is None else list(order_by)),
                       t.runs.c.lifecycle_stage, view)
    q = q.limit(bindparam(PAGE_LIMIT, 0, type_=BigInteger)).offset(
        bindparam(PAGE_OFFSET, 0, type_=BigInteger))
    done = q.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    # The values as SQLAlchemy would bind them (its type's conversion, e.g. to float); the
    # values of an expanded IN list (name_1, name_2 ... of list ``name``) as the list's.
    convert = {name: bind.type.dialect_impl(dialect).bind_processor(dialect)
               for name, bind in done.binds.items()}
    expanded = {name for name, bind in done.binds.items() if bind.expanding}
    values = {}
    for name, value in done.params.items():
        to = convert.get(name)
        if name not in convert:
            base, _, index = name.rpartition("_")
            to = convert.get(base) if index.isdigit() and base in expanded else None
        values[name] = value if to is None else to(value)
    sql = dbapi.Sql(done.string, tuple(done.positiontup or ()) if done.positional else None)
    return sql, values


_cached_search_sql = functools.lru_cache(maxsize=_CACHED)(_search_sql)


def compare(column: Any, op: str, value: Any) -> Any:
    """``column op value`` in SQL, for the comparators of MLflow's search grammar."""
    if op == "=":
        return column == value
    if op == "!=":
        return column != value
    if op == ">":
        return column > value
    if op == ">=":
        return column >= value
    if op == "<":
        return column < value
    if op == "<=":
        return column <= value
    if op == "LIKE":  # \ escapes % and _ on both databases (PostgreSQL's default)
        return column.like(value, escape="\\")
    if op == "ILIKE":
        return func.lower(column).like(func.lower(literal(value)), escape="\\")
    if op == "IN":
        return column.in_(list(value))
    return column.not_in(list(value))  # NOT IN


def _order(q: Select[Any], order: OrderBy) -> Select[Any]:
    if order.kind == "attribute":
        column: Any = _ATTRIBUTE_COLUMNS[order.key]
    else:
        table = _KEYED[order.kind]
        column = (select(table.c.value).where(table.c.run_id == t.runs.c.run_id,
                                              table.c.key == order.key)
                  .scalar_subquery())
    # Missing values last whichever the direction (NULLS LAST spelled portably).
    q = q.order_by(column.is_(None))
    return q.order_by(column.asc() if order.ascending else column.desc())
