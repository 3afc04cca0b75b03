"""Connections to the metadata database: SQLite (WAL) by default, PostgreSQL for teams.

Two kinds of transaction: ``read()`` and ``write()``. On SQLite a write transaction starts with
``BEGIN IMMEDIATE`` so that concurrent writers queue on the busy timeout instead of failing when
a read lock is upgraded; on PostgreSQL row locks and an advisory lock (for the audit chain) do
the same job. The schema is created and upgraded only by Alembic migrations, under a lock, so
several processes can open a fresh database at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DataError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.pool import QueuePool

from mlharbor.core.errors import ConfigError, ConflictError, InvalidInputError, UnavailableError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Arbitrary, fixed keys for PostgreSQL advisory locks.
PG_MIGRATION_LOCK = 0x6D6C6801
PG_AUDIT_LOCK = 0x6D6C6802
SQLITE_BUSY_TIMEOUT_S = 60
#: Page cache per SQLite connection, KiB (SQLite's default is 2,000). A search over 10,000
#: runs reads ~6 MB of runs, tags and latest metrics: with the default each search read most
#: pages again from the file. Taken only as pages are read; the pool reuses the connection
#: used last (``pool_use_lifo``), so one connection's cache stays warm.
SQLITE_CACHE_KIB = 32 * 1024


class Database:
    """An engine plus the transaction rules above."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(
                "The database URL is not a valid SQLAlchemy URL.",
                hint="Use sqlite:///path/to/file.db or postgresql+psycopg://user@host/db.",
            ) from exc
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"Unsupported database {self.dialect!r}; supported: sqlite, postgresql."
            )
        if self.dialect == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.engine = self._make_engine(parsed, echo=echo)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def _make_engine(self, url: Any, *, echo: bool) -> Engine:
        if self.dialect == "sqlite":
            # A "file:" URI names its file itself (SQLite opens it as the URI says).
            if url.database and url.database != ":memory:" \
                    and not url.database.startswith("file:"):
                if not url.query:
                    # Absolute once, here: every connection to the file (the pool's, the quick
                    # metric writer's) opens the same one whatever the working folder is later.
                    url = url.set(database=str(Path(url.database).expanduser().absolute()))
                Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                url,
                echo=echo,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
                # A file's pool hands out the connection used last (warm cache); a database
                # in memory has one connection per thread and no such choice.
                **({"pool_use_lifo": True} if issubclass(
                    url.get_dialect().get_pool_class(url), QueuePool) else {}),
            )
            _install_sqlite_hooks(engine)
            return engine
        return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=10)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only unit of work."""
        with self._translate_errors(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A unit of work that changes data: all of it commits or none of it does."""
        with (
            self._translate_errors(),
            self.engine.connect().execution_options(mlharbor_write=True) as conn,
            conn.begin(),
        ):
            yield conn

    def lock_audit_chain(self, conn: Connection) -> None:
        """Serialise appends to the audit chain (SQLite's write lock already does)."""
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_AUDIT_LOCK})

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except SAIntegrityError as exc:
            raise ConflictError(
                "A concurrent change conflicted with this one (the record already exists or "
                "was changed meanwhile).",
                hint="Read the current state and try again.",
            ) from exc
        except DataError as exc:
            raise InvalidInputError(
                f"The database refused a value: {_first_line(exc.orig)}.",
                hint="Check numbers are finite and within range.",
            ) from exc
        except OperationalError as exc:
            raise UnavailableError(
                f"The metadata database is unavailable ({self.dialect}): "
                f"{_first_line(exc.orig)}.",
                hint="Check that the database is running and MLHARBOR_DATABASE_URL is right.",
            ) from exc
        except ProgrammingError as exc:
            raise _refused(self.dialect, exc) from exc
        except DatabaseError as exc:
            # Anything else the database itself raised (an internal error, an unsupported
            # feature): the request was fine, the store could not serve it.
            raise UnavailableError(
                f"The metadata database failed ({self.dialect}): {_first_line(exc.orig)}.",
                hint="Try again; if it persists, check the database server's log.",
            ) from exc

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest migration, safely from many processes."""
        if self._at_head():
            return
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        head = ScriptDirectory.from_config(config).get_current_head()
        try:
            with self.engine.connect() as conn:
                if MigrationContext.configure(conn).get_current_revision() == head:
                    return
            with self.write() as conn:
                if self.dialect == "postgresql":
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK}
                    )
                if MigrationContext.configure(conn).get_current_revision() == head:
                    return
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except OperationalError as exc:
            raise UnavailableError(
                f"Cannot reach the metadata database ({self.dialect}): {_first_line(exc.orig)}.",
                hint="Check that the database is running and MLHARBOR_DATABASE_URL is right.",
            ) from exc
        except SQLAlchemyError as exc:
            raise UnavailableError(
                f"Migrating the metadata database failed: {_first_line(exc)}."
            ) from exc

    def _at_head(self) -> bool:
        """Whether the schema is at the newest migration, read without importing Alembic
        (most of a serving process's start-up otherwise): the head is the one revision of the
        migration files no other names as its ``down_revision``. Anything unclear (no version
        table yet, several heads, an unreadable file) answers False: Alembic decides."""
        import re

        revisions: set[str] = set()
        parents: set[str] = set()
        pattern = re.compile(r'^(down_revision|revision) = "([^"]+)"$', re.M)
        try:
            for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
                for kind, value in pattern.findall(path.read_text()):
                    (parents if kind == "down_revision" else revisions).add(value)
            heads = revisions - parents
            if len(heads) != 1:
                return False
            with self.engine.connect() as conn:
                current = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        except (OSError, SQLAlchemyError):
            return False
        return [row[0] for row in current] == list(heads)

    def dispose(self) -> None:
        self.engine.dispose()


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        # LIKE tells case apart, as on PostgreSQL and in MLflow's search grammar (ILIKE is
        # the one that does not); SQLite's default folds ASCII case, so a search, a listing
        # by prefix or an artifact folder would answer differently on the two databases.
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("mlharbor_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def _first_line(exc: object) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


#: PostgreSQL's SQLSTATEs for a table or a column that does not exist.
_SCHEMA_STATES = ("42P01", "42703")
_PRIVILEGE_STATE = "42501"


def _refused(dialect: str, exc: ProgrammingError) -> UnavailableError:
    """A statement the database refused, by its SQLSTATE: a schema that is not the one this
    mlharbor expects, a missing privilege, or (anything else) a statement it could not run."""
    state = getattr(exc.orig, "sqlstate", None)
    if state in _SCHEMA_STATES:
        return UnavailableError(
            f"The metadata database's schema does not match this mlharbor ({dialect}): "
            f"{_first_line(exc.orig)}.",
            hint="A table or column is missing or altered: point MLHARBOR_DATABASE_URL at "
            "mlharbor's own database, or restore it from a backup.")
    if state == _PRIVILEGE_STATE:
        return UnavailableError(
            f"The metadata database refused this for lack of a privilege ({dialect}): "
            f"{_first_line(exc.orig)}.",
            hint="Grant the database role mlharbor's privileges: `mlharbor admin db-roles` "
            "prints the statements.")
    return UnavailableError(
        f"The metadata database could not run a statement ({dialect}): "
        f"{_first_line(exc.orig)}.",
        hint="Try again; if it persists, report it with the server's log.")

