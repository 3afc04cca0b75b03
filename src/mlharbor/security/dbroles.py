"""A PostgreSQL role for the application that can append to the audit trail but never change it.

Run as the database owner (who also runs migrations), after every upgrade::

    mlharbor admin db-roles --app-role mlharbor_app [--password-env APP_DB_PASSWORD]

then point the servers at ``postgresql+psycopg://mlharbor_app@host/db``. The role may read and
write the registry's tables, read (not change) ``alembic_version``, and only SELECT and INSERT
``audit_events``: UPDATE, DELETE and TRUNCATE there fail with "permission denied".
"""

from __future__ import annotations

import re

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from mlharbor.core.errors import ConfigError, InvalidInputError, UnavailableError

AUDIT_TABLE = "audit_events"
_ROLE_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def app_role_statements(role: str, database: str, *, password: str | None) -> list[str]:
    if not _ROLE_RE.fullmatch(role):
        raise InvalidInputError(
            f"Role name {role!r} is not allowed: use lower-case letters, digits and _.",
            field="app_role")
    quoted_db = '"' + database.replace('"', '""') + '"'
    login = "LOGIN" if password is None else \
        "LOGIN PASSWORD '" + password.replace("'", "''") + "'"
    return [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
        f"THEN CREATE ROLE {role} LOGIN; END IF; END $$",
        f"ALTER ROLE {role} {login} NOSUPERUSER NOCREATEDB NOCREATEROLE",
        f"GRANT CONNECT ON DATABASE {quoted_db} TO {role}",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"REVOKE CREATE ON SCHEMA public FROM {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM {role}",
        f"REVOKE UPDATE, DELETE, TRUNCATE ON {AUDIT_TABLE} FROM {role}",
    ]


def grant_app_role(engine: Engine, role: str, *, password: str | None = None) -> int:
    """Create or update ``role`` with the grants above; returns how many statements ran."""
    if engine.dialect.name != "postgresql":
        raise ConfigError(
            "Database roles apply to PostgreSQL only; this database is "
            f"{engine.dialect.name}.",
            hint="On SQLite, protect the file with file-system permissions instead.",
        )
    with engine.begin() as conn:
        database = str(conn.execute(text("SELECT current_database()")).scalar_one())
        statements = app_role_statements(role, database, password=password)
        for statement in statements:
            try:
                conn.execute(text(statement))
            except DBAPIError as exc:
                # The statement may hold the password: report which step failed, not its text.
                step = statement.split(" PASSWORD ", 1)[0][:80]
                failure = UnavailableError(
                    f"Setting up role {role!r} failed at: {step} ...",
                    hint="Run this as the database owner (the role that ran the migrations).",
                )
                if " PASSWORD " in statement:
                    # The driver's error quotes the statement, password included: drop it
                    # rather than chain it into a --debug traceback.
                    raise failure from None
                raise failure from exc
    return len(statements)
