"""SQLite's WAL checkpoints for metric writes, on a thread of their own instead of inside the
request that happened to take the log past SQLite's threshold.

In WAL mode SQLite appends each commit's pages to the ``-wal`` file, and the connection whose
commit takes the log past ``wal_autocheckpoint`` pages (1000) copies the log back into the
database file, with an ``fsync`` of each, before its commit returns. When the series index
was keyed by metric first, a batch of 100 metrics of a long run dirtied ~120 pages, so every
~6-8th ``mlflow.log_metrics`` call paid for a checkpoint: with the real client, 300 batched
calls gave 98 ``fdatasync`` on the server, 0.29 s in all (median 2.1 ms, slowest 48 ms). Keyed
by step (migration 0009) such a batch adds ~13 pages while few runs share its keys; once
thousands do, the latest values' ``(key, value)`` index moves an entry per key and a batch adds
~200 pages again. Either way this module keeps the checkpoint out of the request.

So the tracking store's metric writes of :data:`DEFER_POINTS` points or more
(:meth:`Checkpointer.defer`) turn the connection's automatic checkpoint off for their
transaction (the setting goes back as the connection returns to the pool, before anyone else
can check it out) and, after the commit, count the pages they added
(:meth:`Checkpointer.wrote`: an estimate, :data:`PAGES_PER_COMMIT` a commit and the pages per
point each checkpoint measures in the log). Every :data:`PAGES` pages the database's checkpoint
thread runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a pooled connection, outside any transaction:
it never blocks readers or writers. Under continuous writes a passive checkpoint is never
caught up when the next writer starts, and SQLite restarts the log only then, so once the log
is past :data:`RESTART_PAGES` the thread runs a ``RESTART`` checkpoint: it waits for the writer
of the moment, holds new writers off while it copies what the passive ones left (little), and
the log starts over. After a checkpoint that caught the log up the thread also makes the first
write of the new log itself (one page, :func:`_start_over`): that write syncs the new log's
header, and the quick metric writes (:mod:`.quick`, on the event loop) leave their checkpoints
to this thread so as never to sync. Measured in process at the client's pace (100 points a
call, 4 ms of other work between calls, alternating runs, load ~3): ``log_batch``
3.13/2.91/3.62 -> 2.59/2.73/2.27 ms of wall a call on average, the log at most ~24 MB.

Durability is unchanged: a commit returns once it is in the WAL (``synchronous=NORMAL``), which
survives a crash of the process, and the log is synced at each checkpoint, as often as before
(every ~:data:`PAGES` pages). Other writers (the registry) keep SQLite's automatic checkpoint.
If the thread is slow or a checkpoint fails (logged), the log grows until the next one.
"""

from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from mlharbor.tracking.dbapi import PerSqliteFile

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

log = logging.getLogger(__name__)

#: Only commits of at least this many points defer their checkpoint: a one-point commit adds
#: ~5 pages, SQLite's own checkpoint comes every ~200 of them, and deferring costs each commit
#: two statements and the check-in one.
DEFER_POINTS = 20
#: A checkpoint after metric writes have added about this many pages (SQLite's own default).
PAGES = 1000
#: Pages a metric-write commit adds besides its points' (run row, table and index tails).
PAGES_PER_COMMIT = 3
#: Pages of the log a metric point adds, until the first checkpoint has measured it: the most
#: it takes (a leaf of each index a point moves), so the first checkpoint never comes late.
#: What it really is depends on the database: ~0.1 for 100-key batches of a long run when few
#: runs share those keys (migration 0009 keeps a batch on one or two leaves of the series
#: index), ~2 once thousands of runs do (each value moves its entry of the latest values'
#: (key, value) index to another leaf).
FIRST_PAGES_PER_POINT = 2.0
#: Past this many pages in the log, a RESTART checkpoint so the log starts over.
RESTART_PAGES = 4000
#: The checkpoint thread ends after this long without work (the next request starts another).
IDLE_S = 30.0
_DEFERRED = "mlharbor_wal_autocheckpoint"  # the pooled connection's own setting, to put back


def for_engine(engine: Engine) -> Checkpointer | None:
    """The checkpointer of ``engine`` if it is a SQLite file database (made on first use)."""
    return _BY_ENGINE.get(engine)


class Checkpointer:
    """Runs WAL checkpoints for one SQLite engine on a daemon thread, on request."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._points = 0  # metric points committed since the last checkpoint measured the log
        self._commits = 0
        self._per_point = FIRST_PAGES_PER_POINT  # pages a point adds, as last measured
        self._frames = 0  # the log's length at the last checkpoint
        self._requested = False
        self.checkpoints = 0  # how many ran (tests, diagnostics)
        event.listen(engine, "checkin", _restore)
        event.listen(engine, "engine_disposed", self._on_dispose)

    def defer(self, conn: Connection) -> None:
        """No automatic checkpoint when ``conn``'s transaction commits (until its DBAPI
        connection goes back to the pool); call :meth:`wrote` after the commit."""
        fairy = conn.connection
        if self._closed or _DEFERRED in fairy.info:  # disposed: SQLite's own checkpoints
            return
        raw: Any = fairy.driver_connection
        previous = int(raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        raw.execute("PRAGMA wal_autocheckpoint=0")
        fairy.info[_DEFERRED] = previous

    def wrote(self, points: int) -> None:
        """A deferred transaction with ``points`` metric points committed: a checkpoint on
        the thread once about :data:`PAGES` pages have gathered, by the pages per point the
        last checkpoint measured."""
        with self._lock:
            self._points += points
            self._commits += 1
            if self._closed or self._requested or \
                    self._commits * PAGES_PER_COMMIT + self._points * self._per_point < PAGES:
                return
            self._requested = True  # until that checkpoint has run: one request, not one a call
            self._wanted.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="mlharbor-wal-checkpoint")
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wanted.wait(IDLE_S)
            with self._lock:
                if not self._wanted.is_set() or self._closed:  # idle or disposed: end
                    self._thread = None
                    return
                self._wanted.clear()
            self.checkpoint()

    def checkpoint(self) -> None:
        """A passive checkpoint now, and a restarting one if the log is long."""
        engine = self._engine()
        if engine is None or self._closed:
            return
        try:
            raw: Any = engine.raw_connection()
            try:
                cursor = raw.driver_connection
                busy, pages, done = cursor.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                caught_up = not busy and 0 <= done == pages
                if pages > RESTART_PAGES and not caught_up:
                    busy, _pages, _done = cursor.execute(
                        "PRAGMA wal_checkpoint(RESTART)").fetchone()
                    caught_up = not busy
                started_over = False
                if caught_up:
                    path = str(engine.url.database)
                    before = _log_generation(path)
                    _start_over(cursor)
                    # Not if a writer came first meanwhile (it started the log over, or wrote
                    # after what was checkpointed: then the log goes on from here).
                    started_over = before is not None and _log_generation(path) != before
                self._measured(int(pages), restarted=started_over)
            finally:
                raw.close()
        except Exception:  # a failed checkpoint leaves the log to the next one
            log.warning("WAL checkpoint failed", exc_info=True)
        with self._lock:
            self._requested = False
        self.checkpoints += 1

    def _measured(self, pages: int, *, restarted: bool = False) -> None:
        """The log held ``pages`` frames: learn what a point added since the last look. The
        log starts over after a complete checkpoint, so a shorter log grew from nothing (and
        after a RESTART checkpoint the next look starts from nothing). Other writers' pages
        count as the points' (checkpoints come early, never late). Under the lock: a
        checkpoint asked for directly may run beside the thread's."""
        with self._lock:
            grown = pages - self._frames if pages >= self._frames else pages
            if self._points:
                per_point = (grown - self._commits * PAGES_PER_COMMIT) / self._points
                self._per_point = min(max(per_point, 0.01), 4.0)
            self._points = self._commits = 0
            self._frames = 0 if restarted else pages

    def _on_dispose(self, _engine: Engine) -> None:
        with self._lock:
            self._closed = True
            self._wanted.set()


def _start_over(cursor: Any) -> None:
    """Start the log over on this thread, after a checkpoint that caught it up: the first
    write after such a checkpoint writes a new log header and syncs it (and its folder), and
    that must not be a quick metric write on the event loop (:mod:`.quick`). The write sets
    the schema's user version to what it is: one page, nothing changed."""
    cursor.execute("BEGIN IMMEDIATE")
    try:
        version = int(cursor.execute("PRAGMA user_version").fetchone()[0])
        cursor.execute(f"PRAGMA user_version={version}")
        cursor.execute("COMMIT")
    except BaseException:
        cursor.execute("ROLLBACK")
        raise


def _log_generation(path: str) -> int | None:
    """The checkpoint sequence number in the header of database ``path``'s log: SQLite moves
    it each time the log starts over. None if the log has no header to read."""
    try:
        with Path(f"{path}-wal").open("rb") as wal:
            head = wal.read(16)
    except OSError:
        return None
    return int.from_bytes(head[12:16], "big") if len(head) == 16 else None


_BY_ENGINE: PerSqliteFile[Checkpointer] = PerSqliteFile(Checkpointer)


def _restore(dbapi_connection: Any, record: Any) -> None:
    """The pooled connection's own ``wal_autocheckpoint`` back, as it returns to the pool."""
    previous = record.info.pop(_DEFERRED, None)
    if previous is not None and dbapi_connection is not None:
        dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={int(previous)}")
