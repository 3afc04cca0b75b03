"""Experiment tracking (``mlharbor.tracking``): experiments, runs, params, tags, metrics,
latest metric values, run artifact files and logged models.

Revision ID: 0008
Revises: 0007

The shape must agree with ``mlharbor.tracking.schema`` (a test compares them). The "Default"
experiment (id 0) is created here, as MLflow clients log into it when no experiment is named.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BIG = sa.BigInteger
RUN_ID = sa.String(32)
KEY = sa.String(250)


def upgrade() -> None:
    experiments = op.create_table(
        "tracking_experiments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("artifact_location", sa.Text, nullable=False),
        sa.Column("lifecycle_stage", sa.String(16), nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("creation_time", BIG, nullable=False),
        sa.Column("last_update_time", BIG, nullable=False),
    )
    op.create_table(
        "tracking_runs",
        sa.Column("run_id", RUN_ID, primary_key=True),
        sa.Column("experiment_id", sa.Integer, sa.ForeignKey("tracking_experiments.id"),
                  nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("start_time", BIG, nullable=False),
        sa.Column("end_time", BIG, nullable=True),
        sa.Column("lifecycle_stage", sa.String(16), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("artifact_uri", sa.Text, nullable=False),
        sa.Column("parent_run_id", RUN_ID, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("inputs", sa.JSON, nullable=False),
        sa.Column("outputs", sa.JSON, nullable=False),
    )
    op.create_index("ix_tracking_runs_experiment_start", "tracking_runs",
                    ["experiment_id", "start_time"])
    op.create_index("ix_tracking_runs_parent", "tracking_runs", ["parent_run_id"])
    for table in ("tracking_params", "tracking_tags"):
        op.create_table(
            table,
            sa.Column("run_id", RUN_ID, sa.ForeignKey("tracking_runs.run_id"),
                      primary_key=True),
            sa.Column("key", KEY, primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
    op.create_table(
        "tracking_metrics",
        sa.Column("id", BIG().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("run_id", RUN_ID, nullable=False),
        sa.Column("key", KEY, nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("timestamp", BIG, nullable=False),
        sa.Column("step", BIG, nullable=False),
    )
    op.create_index("ix_tracking_metrics_run_key_step", "tracking_metrics",
                    ["run_id", "key", "step"])
    op.create_table(
        "tracking_latest_metrics",
        sa.Column("run_id", RUN_ID, sa.ForeignKey("tracking_runs.run_id"), primary_key=True),
        sa.Column("key", KEY, primary_key=True),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("timestamp", BIG, nullable=False),
        sa.Column("step", BIG, nullable=False),
    )
    op.create_index("ix_tracking_latest_metrics_key_value", "tracking_latest_metrics",
                    ["key", "value"])
    op.create_table(
        "tracking_files",
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", BIG, nullable=False),
        sa.Column("created_at", BIG, nullable=False),
    )
    op.create_table(
        "tracking_logged_models",
        sa.Column("model_id", sa.String(40), primary_key=True),
        sa.Column("experiment_id", sa.Integer, sa.ForeignKey("tracking_experiments.id"),
                  nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("source_run_id", RUN_ID, nullable=True),
        sa.Column("artifact_location", sa.Text, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("model_type", sa.String(255), nullable=True),
        sa.Column("creation_time", BIG, nullable=False),
        sa.Column("last_updated_time", BIG, nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
    )
    op.create_index("ix_tracking_logged_models_run", "tracking_logged_models",
                    ["source_run_id"])
    now = int(time.time() * 1000)
    op.bulk_insert(experiments, [{
        "id": 0, "name": "Default", "artifact_location": "mlflow-artifacts:/0",
        "lifecycle_stage": "active", "tags": {}, "creation_time": now,
        "last_update_time": now,
    }])


def downgrade() -> None:
    for table in ("tracking_logged_models", "tracking_files", "tracking_latest_metrics",
                  "tracking_metrics", "tracking_tags", "tracking_params", "tracking_runs",
                  "tracking_experiments"):
        op.drop_table(table)
