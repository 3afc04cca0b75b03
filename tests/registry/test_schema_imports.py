"""The schema module does not load SQLAlchemy's PostgreSQL dialect on SQLite (a launch cost)."""

from __future__ import annotations

import subprocess
import sys

from mlharbor.registry.schema import _attach_postgresql_where, jobs


def test_importing_the_schema_leaves_the_postgresql_dialect_unloaded() -> None:
    code = ("import sys, mlharbor.registry.schema; "
            "print('sqlalchemy.dialects.postgresql' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_partial_index_compiles_with_its_where_on_both_dialects() -> None:
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.schema import CreateIndex

    _attach_postgresql_where()  # what a PostgreSQL engine's first connection does
    index = next(i for i in jobs.indexes if i.name == "uq_jobs_active_endpoint")
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        ddl = str(CreateIndex(index).compile(dialect=dialect))
        assert "WHERE state IN ('queued', 'running', 'waiting')" in ddl, ddl
