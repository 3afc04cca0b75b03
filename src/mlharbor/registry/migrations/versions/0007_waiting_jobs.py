"""A job waiting for an approval still holds its endpoint (``mlharbor.pipelines.jobs``).

Revision ID: 0007
Revises: 0006

``uq_jobs_active_endpoint`` is rebuilt so its partial condition counts ``waiting`` jobs too:
at most one queued, running or waiting job per endpoint, enforced by the database. The literal
is the one in ``mlharbor.registry.schema.JOB_ACTIVE_STATES_SQL``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ACTIVE = sa.text("state IN ('queued', 'running', 'waiting')")
BEFORE = sa.text("state IN ('queued', 'running')")


def upgrade() -> None:
    op.drop_index("uq_jobs_active_endpoint", table_name="jobs")
    op.create_index("uq_jobs_active_endpoint", "jobs", ["endpoint"], unique=True,
                    sqlite_where=ACTIVE, postgresql_where=ACTIVE)


def downgrade() -> None:
    op.drop_index("uq_jobs_active_endpoint", table_name="jobs")
    op.create_index("uq_jobs_active_endpoint", "jobs", ["endpoint"], unique=True,
                    sqlite_where=BEFORE, postgresql_where=BEFORE)
