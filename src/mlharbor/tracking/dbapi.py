"""Tracking's hot statements compiled once per dialect and run on the DBAPI cursor of the
transaction the database layer opened.

The metric writes of a training loop (one transaction per ``mlflow.log_metric``) and the
reads that fill a search page (params, tags and latest metrics of up to 50,000 runs) run the
same few statements over and over. Measured in process on SQLite, SQLAlchemy's execution
machinery (compiled-cache look-up, rendering an expanding ``IN`` of 500 ids, parameter
processing, events, result set-up) cost more than the statements themselves: ~430 us of CPU
per one-point write against ~70 us on the bare cursor. So the statements are still written
once, as SQLAlchemy Core (the one source of the SQL, SQLite and PostgreSQL alike), compiled
once per dialect to the driver's own SQL and parameter style (:func:`compiled`), and run on
the cursor of the transaction :meth:`~mlharbor.registry.database.Database.write` or ``read``
opened (:func:`cursor`): the same transaction rules (``BEGIN IMMEDIATE`` on SQLite), the same
commit, and a driver error re-raised as SQLAlchemy's, which the database layer turns into an
mlharbor error as for every other statement.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.engine import Dialect

T = TypeVar("T")


@dataclass(frozen=True)
class Sql:
    """One statement as the driver takes it: its text, and the order of its parameters
    (None: the driver takes them by name)."""

    text: str
    order: tuple[str, ...] | None

    def params(self, values: Mapping[str, Any]) -> Any:
        """``values`` in the driver's parameter style."""
        return values if self.order is None else tuple(values[n] for n in self.order)

    def rows(self, names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[Any]:
        """``rows`` (each the values of ``names``, in that order) in the driver's parameter
        style: the very list when the statement takes them in that order, as a batch of
        ``executemany`` usually does, so a batch is not copied into dictionaries and back."""
        if self.order == names:
            return rows
        if self.order is None:
            return [dict(zip(names, row, strict=True)) for row in rows]
        where = [names.index(n) for n in self.order]
        return [tuple(row[i] for i in where) for row in rows]


def compiled(name: str, build: Callable[[], Any], dialect: Dialect) -> Sql:
    """Statement ``name`` (made by ``build()``, SQLAlchemy Core with named bind parameters)
    compiled for ``dialect`` on first use, then kept per database, driver and paramstyle."""
    key = (name, dialect.name, dialect.driver, dialect.paramstyle)
    found = _COMPILED.get(key)
    if found is None:
        done = build().compile(dialect=dialect)
        found = _COMPILED[key] = Sql(done.string, tuple(done.positiontup)
                                     if done.positional else None)
    return found


_COMPILED: dict[tuple[str, str, str, str], Sql] = {}


@contextlib.contextmanager
def cursor(conn: Connection, sql: Sql) -> Iterator[Any]:
    """A cursor of ``conn``'s DBAPI connection (inside its transaction); a driver error
    comes out as SQLAlchemy's (``OperationalError`` for a locked or unreachable database)."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    raw = conn.connection.cursor()
    try:
        yield raw
    except dbapi_error as exc:
        raise DBAPIError.instance(sql.text, None, exc, dbapi_error,
                                  dialect=conn.dialect) from exc
    finally:
        raw.close()


class PerSqliteFile(Generic[T]):
    """One ``make(engine)`` per engine on a SQLite file (made on first use, forgotten with
    the engine): the WAL checkpointer and the quick metric writer each keep theirs here."""

    def __init__(self, make: Callable[[Engine], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._by_engine: weakref.WeakKeyDictionary[Engine, T] = weakref.WeakKeyDictionary()

    def get(self, engine: Engine) -> T | None:
        """``engine``'s own, or None unless it is a SQLite file database."""
        if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
            return None
        with self._lock:
            found = self._by_engine.get(engine)
            if found is None:
                found = self._by_engine[engine] = self._make(engine)
            return found
