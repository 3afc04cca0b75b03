"""Retraining policies and their revisions (``mlharbor.registry.policies``).

Revision ID: 0006
Revises: 0005

The shape must agree with ``policies``/``policy_revisions`` in ``mlharbor.registry.schema``
(a test compares them).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("endpoint", sa.String(255), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False),
    )
    op.create_table(
        "policy_revisions",
        sa.Column("endpoint", sa.String(255), primary_key=True),
        sa.Column("revision", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON, nullable=True),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("policy_revisions")
    op.drop_table("policies")
