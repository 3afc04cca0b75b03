"""Migration 0002 agrees with ``security.schema``; the PostgreSQL app role cannot alter audit."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from mlharbor.bootstrap import open_registry
from mlharbor.registry.service import Registry
from mlharbor.security.schema import metadata
from mlharbor.settings import Settings
from tests.support import cli_env, run_cli


def test_migrations_create_exactly_the_security_tables(db_settings: Settings) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    registry = open_registry(db_settings)
    try:
        with registry.store.db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, metadata)
        ours = set(metadata.tables)
        relevant = [d for d in diff if _table_of(d) in ours]
        assert not relevant, relevant
        from sqlalchemy import inspect

        with registry.store.db.engine.connect() as conn:
            assert ours <= set(inspect(conn).get_table_names())
    finally:
        registry.close()


def _table_of(diff: Any) -> str | None:
    item = diff[0] if isinstance(diff, list) else diff
    for part in item[1:]:
        name = getattr(part, "name", None)
        table = getattr(part, "table", None)
        if table is not None and getattr(table, "name", None):
            return str(table.name)
        if isinstance(part, str):
            return part
        if name and hasattr(part, "columns"):
            return str(name)
    return None


@pytest.mark.postgres
def test_app_role_appends_audit_but_cannot_change_it(pg_url: str, tmp_path: Any) -> None:
    owner = Settings(home=tmp_path / "home", database_url=pg_url)
    open_registry(owner).close()  # the owner runs the migrations
    role = f"mlh_app_{uuid.uuid4().hex[:8]}"
    done = run_cli("admin", "db-roles", "--app-role", role, env=cli_env(owner))
    assert done.returncode == 0, done.stderr
    app_url = pg_url.replace("postgresql+psycopg://postgres@", f"postgresql+psycopg://{role}@")
    try:
        app = Registry.from_settings(Settings(home=tmp_path / "app", database_url=app_url))
        app.create_model("churn", actor="app")  # INSERT into audit_events works
        app.update_model("churn", description="x", actor="app")
        assert sum(1 for _ in app.store.iter_audit()) == 2
        engine = app.store.db.engine
        for statement in ("UPDATE audit_events SET actor = 'mallory'",
                          "DELETE FROM audit_events", "TRUNCATE audit_events",
                          "UPDATE alembic_version SET version_num = '0001'",
                          "CREATE TABLE sneaky (id int)"):
            with pytest.raises(ProgrammingError, match="permission denied"), \
                    engine.begin() as conn:
                conn.execute(text(statement))
        app.close()
    finally:
        admin = create_engine(pg_url)
        with admin.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        admin.dispose()
