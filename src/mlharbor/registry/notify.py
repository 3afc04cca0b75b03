"""Change notification: PostgreSQL LISTEN/NOTIFY, so serving replicas converge at once.

Two halves:

* :func:`publish` runs inside every audited registry write (``MetadataStore.mutate``). On
  PostgreSQL it calls ``pg_notify(CHANNEL, '<action> <resource>')`` in the write's own
  transaction, so the notification is delivered when (and only if) the change commits: a
  rolled-back alias move wakes no one. Only changes serving reads (:data:`SERVING_TOPICS`:
  aliases, endpoints, versions, models) notify; jobs and policies do not. On SQLite it does
  nothing, and servers converge by polling (``serving.poll_interval_s``).
* :class:`ChangeListener` is a daemon thread holding one dedicated autocommit connection with
  ``LISTEN CHANNEL``; each notification calls ``on_change`` (from that thread). A lost
  connection (database restart, a proxy's idle timeout, ``pg_terminate_backend``) is logged
  once and retried with a capped backoff; after every (re)connection ``on_change`` is called
  once, since changes committed while nobody listened were never delivered. Meanwhile the
  caller keeps polling, so a listener outage only slows convergence back to one poll interval.

Why a dedicated connection and not the engine's pool: a LISTEN lives as long as its session,
and pooled connections are reset and shared.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from mlharbor.registry.database import Database

log = logging.getLogger("mlharbor.registry.notify")

CHANNEL = "mlharbor_registry"
#: Action prefixes (``alias.set`` -> ``alias``) whose changes serving must see.
SERVING_TOPICS = frozenset({"alias", "endpoint", "version", "model"})
#: pg_notify refuses payloads of 8000 bytes or more; ours are short, this keeps them so.
MAX_PAYLOAD = 1000
#: The listener's session name in pg_stat_activity (operators and tests find it by it).
APPLICATION_NAME = "mlharbor-listen"
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 10.0
#: How often the listening thread looks up from its socket to see whether it must stop.
WAKE_S = 0.5


def publish(conn: Connection, action: str, resource: str) -> None:
    """Notify listeners of ``action`` on ``resource`` when ``conn``'s transaction commits.

    No-op on SQLite and for actions serving does not read."""
    if conn.dialect.name != "postgresql" or action.split(".", 1)[0] not in SERVING_TOPICS:
        return
    conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                 {"channel": CHANNEL, "payload": f"{action} {resource}"[:MAX_PAYLOAD]})


def conninfo(db: Database) -> str | None:
    """A libpq connection string for ``db``, or None when it is not PostgreSQL."""
    if db.dialect != "postgresql":
        return None
    url = db.engine.url.set(drivername="postgresql")
    return str(url.render_as_string(hide_password=False))


class ChangeListener:
    """Calls ``on_change`` for every registry change notified on :data:`CHANNEL` (see the
    module docstring); ``start()`` and ``stop()`` from any thread."""

    def __init__(self, dsn: str, on_change: Callable[[], None], *,
                 reconnect_max_s: float = RECONNECT_MAX_S) -> None:
        self.dsn = dsn
        self.on_change = on_change
        self.reconnect_max_s = reconnect_max_s
        self.connected = threading.Event()
        self.notifications = 0
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_database(cls, db: Database, on_change: Callable[[], None]
                     ) -> ChangeListener | None:
        """A listener on ``db``, or None on SQLite (polling only)."""
        dsn = conninfo(db)
        return None if dsn is None else cls(dsn, on_change)

    def start(self) -> ChangeListener:
        self._thread = threading.Thread(target=self._run, name="mlharbor-listen", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2 * WAKE_S + 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        delay = RECONNECT_FIRST_S
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:
                if self.connected.is_set() or self.reconnects == 0:  # once per outage
                    log.warning(
                        "listening for registry changes failed (%s: %s); polling until it "
                        "reconnects", type(exc).__name__, " ".join(str(exc).split())[:300],
                        extra={"event": "registry.listen_lost"})
                if self.connected.is_set():
                    delay = RECONNECT_FIRST_S
                self.connected.clear()
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.reconnect_max_s)
                self.reconnects += 1
        self.connected.clear()

    def _listen(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                             application_name=APPLICATION_NAME) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self.connected.set()
            log.info("listening for registry changes", extra={"event": "registry.listen"})
            # Whatever changed while no one listened was never delivered: look once.
            self._changed()
            while not self._stop.is_set():
                for _note in conn.notifies(timeout=WAKE_S):
                    self.notifications += 1
                    self._changed()
                    if self._stop.is_set():
                        break
                if conn.closed or conn.broken:
                    raise ConnectionError("the listening connection was closed")

    def _changed(self) -> None:
        try:
            self.on_change()
        except Exception:  # the callback's problem must not end listening
            log.exception("registry change callback failed")


def listener_status(listener: ChangeListener | None) -> dict[str, Any]:
    """How changes reach a server, for status pages and logs."""
    if listener is None:
        return {"mode": "polling"}
    return {"mode": "notify" if listener.connected.is_set() else "polling (reconnecting)",
            "notifications": listener.notifications, "reconnects": listener.reconnects}
