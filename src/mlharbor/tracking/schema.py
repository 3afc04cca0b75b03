"""The tracking tables, as SQLAlchemy Core: experiments, runs, params, tags, metric points,
the latest value of each metric, run artifact files and logged models.

Created and changed only by migrations ``0008_tracking`` and ``0009_metrics_by_step`` (a test
compares them). They live in the registry's database, so a run and the version registered from
it share one transaction log and one backup.

Why a ``latest_metrics`` table beside the full series: ``search_runs`` filters and sorts on a
run's latest value of a metric, and over 10,000 runs a lookup on ``(key, value)`` is what keeps
that answer fast; every metric write updates it in the same transaction.
A NaN metric is stored as NULL (SQLite has no NaN) and read back as NaN.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

#: The experiment MLflow clients use when none is named; created by the migration.
DEFAULT_EXPERIMENT_ID = 0
DEFAULT_EXPERIMENT_NAME = "Default"

experiments = Table(
    "tracking_experiments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("artifact_location", Text, nullable=False),
    Column("lifecycle_stage", String(16), nullable=False),
    Column("tags", JSON, nullable=False),
    Column("creation_time", BigInteger, nullable=False),
    Column("last_update_time", BigInteger, nullable=False),
)

runs = Table(
    "tracking_runs",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("experiment_id", Integer, ForeignKey("tracking_experiments.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("start_time", BigInteger, nullable=False),
    Column("end_time", BigInteger, nullable=True),
    Column("lifecycle_stage", String(16), nullable=False),
    Column("user_id", String(255), nullable=False),
    Column("artifact_uri", Text, nullable=False),
    Column("parent_run_id", String(32), nullable=True),
    Column("error", Text, nullable=True),
    # What MLflow's log-inputs / log-outputs sent (datasets, model outputs), kept as sent.
    Column("inputs", JSON, nullable=False),
    Column("outputs", JSON, nullable=False),
    Index("ix_tracking_runs_experiment_start", "experiment_id", "start_time"),
    Index("ix_tracking_runs_parent", "parent_run_id"),
)

params = Table(
    "tracking_params",
    metadata,
    Column("run_id", String(32), ForeignKey("tracking_runs.run_id"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
)

tags = Table(
    "tracking_tags",
    metadata,
    Column("run_id", String(32), ForeignKey("tracking_runs.run_id"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
)

metrics = Table(
    "tracking_metrics",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("run_id", String(32), nullable=False),
    Column("key", String(250), nullable=False),
    Column("value", Float, nullable=True),
    Column("timestamp", BigInteger, nullable=False),
    Column("step", BigInteger, nullable=False),
    Index("ix_tracking_metrics_run_step_key", "run_id", "step", "key"),
)

latest_metrics = Table(
    "tracking_latest_metrics",
    metadata,
    Column("run_id", String(32), ForeignKey("tracking_runs.run_id"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Float, nullable=True),
    Column("timestamp", BigInteger, nullable=False),
    Column("step", BigInteger, nullable=False),
    Index("ix_tracking_latest_metrics_key_value", "key", "value"),
)

files = Table(
    "tracking_files",
    metadata,
    # The path under the artifact proxy's root ("1/<run_id>/artifacts/model/MLmodel"): one
    # namespace for run artifacts, logged models and whatever an MLflow client uploads.
    Column("path", String(1024), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

logged_models = Table(
    "tracking_logged_models",
    metadata,
    Column("model_id", String(40), primary_key=True),
    Column("experiment_id", Integer, ForeignKey("tracking_experiments.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("source_run_id", String(32), nullable=True),
    Column("artifact_location", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("model_type", String(255), nullable=True),
    Column("creation_time", BigInteger, nullable=False),
    Column("last_updated_time", BigInteger, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("params", JSON, nullable=False),
    Index("ix_tracking_logged_models_run", "source_run_id"),
)
