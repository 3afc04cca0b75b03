"""Metric writes that never wait, so a training loop's ``mlflow.log_metric`` is answered at once.

A loop logging one metric per call waits for each answer: the server's time per point is the
loop's slowdown. Through the store's regular path a one-point write pays SQLAlchemy's
connection, transaction and execution machinery and two hand-overs between the event loop and
a write thread. Measured in process at the MLflow client's pace (the server idle ~1.5 ms
between calls, so every call starts with cold caches), that was ~270 us of CPU of the ~460 a
``log-metric`` request took; the statements themselves take ~40.

:class:`QuickWriter` writes a few points on a SQLite file's own DBAPI connection, one per
thread, that never waits: its busy timeout is 0, so while another connection holds the
database ``BEGIN IMMEDIATE`` fails at once and :meth:`QuickWriter.write` answers False having
written nothing. The caller then takes the store's regular path, which waits its turn. That is
what lets the MLflow routes run it on the event loop: it never blocks on a lock, and its work is
bounded (at most :data:`MAX_POINTS` points; the commit appends the transaction's pages to the
WAL, without ``fsync``). The connection never checkpoints (``wal_autocheckpoint=0``, which would
``fsync`` inside the request): its commits are counted for the database's checkpoint thread
(:mod:`.checkpoint`), as the store's large batches are. That thread also starts the log over
itself after a checkpoint that caught it up (the first writer after such a checkpoint writes a
new log header and syncs it), so the sync is not left to the next quick write.

A connection must not cross a ``fork`` (SQLite's locks and shared memory are per process): in a
forked child the writer takes nothing and leaves every write to the regular path, whose engine
the child must make anew (as SQLAlchemy asks for any pool).

Same statements (:mod:`.writes`), same checks (:func:`~mlharbor.tracking.rows.require_active`),
same durability (the commit is in the WAL with ``synchronous=NORMAL``, as on the regular path).
Any database error other than a refusal of the run rolls back and answers False as well: the
regular path then runs and reports it as every other write does.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import event

from mlharbor.core.runs import MetricPoint
from mlharbor.tracking import rows, writes
from mlharbor.tracking.dbapi import PerSqliteFile

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from mlharbor.tracking.checkpoint import Checkpointer

#: The most points one quick write takes: a ``log_metric``, or a ``log_metrics`` of a few keys
#: per step (larger batches go to the write threads, whose checkpoints are deferred anyway).
MAX_POINTS = 10


def for_engine(engine: Engine) -> QuickWriter | None:
    """The quick writer of ``engine`` if it is a plain SQLite file database (made on first
    use); None for anything else (PostgreSQL, in memory, a URL with options)."""
    return None if engine.url.query else _BY_ENGINE.get(engine)


class _Connection:
    """A thread's connection, in a holder the writer can reach weakly (to close it)."""

    __slots__ = ("__weakref__", "raw")

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw


class QuickWriter:
    """Writes of at most :data:`MAX_POINTS` metric points that never wait for a lock."""

    def __init__(self, engine: Engine) -> None:
        self._path = str(engine.url.database)  # absolute: Database makes it so
        self._pid = os.getpid()  # the process whose connections these are
        self._dialect = engine.dialect
        self._local = threading.local()
        self._open: weakref.WeakSet[_Connection] = weakref.WeakSet()
        # Held while a write runs (never waited for: a write that finds it taken answers
        # False), so that closing never closes a connection in use.
        self._busy = threading.Lock()
        self._closed = False
        self.writes = 0  # how many committed (tests, diagnostics)
        event.listen(engine, "engine_disposed", self._on_dispose)

    def write(self, run_id: str, points: Sequence[MetricPoint],
              checkpointer: Checkpointer | None) -> bool:
        """Append checked ``points`` to run ``run_id`` in one transaction, now. False, with
        nothing written, when that would mean waiting (another writer holds the database),
        for more than :data:`MAX_POINTS` points, or on any database error; NotFoundError or
        InvalidInputError (nothing written) for a missing or deleted run."""
        if not points or len(points) > MAX_POINTS or os.getpid() != self._pid \
                or not self._busy.acquire(blocking=False):
            return False
        try:
            conn = None if self._closed else self._connection()
            if conn is None:
                return False
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:  # locked by another writer (or unusable): nothing begun
                return False
            cursor = conn.cursor()
            try:
                rows.require_active(run_id, writes.stage_of(cursor, self._dialect, run_id))
                writes.insert_metrics(cursor, self._dialect, run_id, points)
                conn.execute("COMMIT")
            except sqlite3.Error:
                _rollback(conn)
                return False
            except BaseException:
                _rollback(conn)
                raise
            finally:
                cursor.close()
            self.writes += 1
        finally:
            self._busy.release()
        if checkpointer is not None:
            checkpointer.wrote(len(points))
        return True

    def _connection(self) -> sqlite3.Connection | None:
        """This thread's connection (opened on first use); None if the file cannot be opened
        or is not in WAL mode (a commit would then ``fsync``), which turns quick writes off
        (every later write would try again on the event loop), or if it is busy this moment
        (the next write tries again)."""
        held: _Connection | None = getattr(self._local, "conn", None)
        if held is not None:
            return held.raw
        try:
            raw = sqlite3.connect(self._path, timeout=0, isolation_level=None,
                                  check_same_thread=False)
        except sqlite3.Error:
            self._closed = True
            return None
        try:
            mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
            for pragma in ("synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=0",
                           "wal_autocheckpoint=0"):
                raw.execute(f"PRAGMA {pragma}")
        except sqlite3.Error:  # locked for a moment (no wait here): the next write tries again
            raw.close()
            return None
        if str(mode).lower() != "wal":
            raw.close()
            self._closed = True
            return None
        held = _Connection(raw)
        self._local.conn = held
        self._open.add(held)
        return raw

    def _on_dispose(self, _engine: Engine) -> None:
        """The engine is disposed: close every thread's connection (once none is in use);
        in a forked child, close none of them (they are the parent's)."""
        with self._busy:
            self._closed = True
            if os.getpid() == self._pid:
                for held in list(self._open):
                    held.raw.close()


_BY_ENGINE: PerSqliteFile[QuickWriter] = PerSqliteFile(QuickWriter)


def _rollback(conn: sqlite3.Connection) -> None:
    # An error: nothing to roll back, or the connection is gone; either way nothing committed.
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")
