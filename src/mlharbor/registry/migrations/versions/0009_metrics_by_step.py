"""Metric points indexed by (run, step, key) instead of (run, key, step).

Revision ID: 0009
Revises: 0008

``mlflow.log_metrics`` sends a step's values of every key in one batch. Indexed by key first,
each of those points lands on its own key's leaf of the index: a batch of 100 keys dirtied
~120 pages (and a WAL checkpoint every few calls), which was most of a batched call's cost.
Indexed by step first, one batch fills one or two neighbouring leaves. A metric's history is
then read by walking its run's entries in step order and keeping its key (the index still
covers the key, so only the matching points are read from the table).
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tracking_metrics_run_step_key", "tracking_metrics",
                    ["run_id", "step", "key"])
    op.drop_index("ix_tracking_metrics_run_key_step", table_name="tracking_metrics")


def downgrade() -> None:
    op.create_index("ix_tracking_metrics_run_key_step", "tracking_metrics",
                    ["run_id", "key", "step"])
    op.drop_index("ix_tracking_metrics_run_step_key", table_name="tracking_metrics")
