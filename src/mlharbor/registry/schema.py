"""The metadata schema, as SQLAlchemy Core tables.

The tables are created and changed only by Alembic migrations (``registry/migrations``); this
module is the shape the code reads and writes, and the migrations must agree with it (a test
compares them).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.engine import Connection, Engine

metadata = MetaData()

models = Table(
    "registered_models",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("tags", JSON, nullable=False),
    # Version numbers are handed out by incrementing this counter in the writer's transaction,
    # so concurrent registrations get 1, 2, 3 ... with no gap and no duplicate.
    Column("last_version", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

versions = Table(
    "model_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_id", Integer, ForeignKey("registered_models.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", Text, nullable=True),
    Column("archived", Boolean, nullable=False, default=False),
    Column("description", Text, nullable=False, default=""),
    Column("tags", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("params", JSON, nullable=False),
    Column("lineage", JSON, nullable=False),
    Column("manifest", JSON, nullable=True),
    Column("created_by", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),
)

version_files = Table(
    "version_files",
    metadata,
    Column("version_id", Integer, ForeignKey("model_versions.id"), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
)

aliases = Table(
    "model_aliases",
    metadata,
    Column("model_id", Integer, ForeignKey("registered_models.id"), primary_key=True),
    Column("alias", String(255), primary_key=True),
    Column("version_id", Integer, ForeignKey("model_versions.id"), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

alias_history = Table(
    "alias_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(255), nullable=False),
    Column("alias", String(255), nullable=False),
    Column("from_version", Integer, nullable=True),
    Column("to_version", Integer, nullable=True),
    Column("actor", String(255), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_alias_history_model_alias", "model_name", "alias"),
)

audit_events = Table(
    "audit_events",
    metadata,
    # seq is assigned by the writer under the chain lock, never by the database, so that the
    # order of the chain is the order of the commits.
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("action", String(64), nullable=False),
    Column("resource", String(1024), nullable=False),
    Column("request_id", String(64), nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("details", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# -- durable jobs (mlharbor.pipelines.jobs; migration 0005) ----------------------------------

#: States in which a job holds its endpoint: at most one such job per endpoint, enforced by the
#: partial unique index below (the same literal is in migration 0007; 0005 had no 'waiting').
JOB_ACTIVE_STATES_SQL = "state IN ('queued', 'running', 'waiting')"

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("endpoint", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    # What the job was asked to do (a RetrainRequest as JSON, say) and the planned step names.
    Column("request", JSON, nullable=False),
    Column("plan", JSON, nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    # The lease: who runs the job and until when; ``attempt`` counts claims and fences writes.
    Column("lease_owner", String(255), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("attempt", Integer, nullable=False, default=0),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("error", Text, nullable=True),
    Index("ix_jobs_state", "state"),
    Index("uq_jobs_active_endpoint", "endpoint", unique=True,
          sqlite_where=text(JOB_ACTIVE_STATES_SQL)),
)


def _postgresql_partial_index(connection: Connection) -> None:
    """Give ``uq_jobs_active_endpoint`` its PostgreSQL ``WHERE`` once a PostgreSQL engine connects.

    Passing ``postgresql_where=`` to ``Index`` makes SQLAlchemy import its whole PostgreSQL
    dialect to validate the keyword (~57 ms of a launch, on SQLite too). The condition only
    matters to PostgreSQL (DDL and schema comparison), which has loaded the dialect by the time
    it connects, so it is attached then; the table is the same as with the keyword.
    """
    if connection.dialect.name != "postgresql" or _PG_WHERE_ATTACHED:
        return
    _attach_postgresql_where()


def _attach_postgresql_where() -> None:
    global _PG_WHERE_ATTACHED
    for index in jobs.indexes:
        if index.name == "uq_jobs_active_endpoint":
            index.dialect_options["postgresql"]["where"] = text(JOB_ACTIVE_STATES_SQL)
    _PG_WHERE_ATTACHED = True


_PG_WHERE_ATTACHED = False
event.listen(Engine, "engine_connect", _postgresql_partial_index)

job_steps = Table(
    "job_steps",
    metadata,
    Column("job_id", String(32), ForeignKey("jobs.id"), primary_key=True),
    Column("ordinal", Integer, primary_key=True, autoincrement=False),
    Column("name", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("runner", String(255), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    # What a step noted while running (its own effects, for an idempotent re-run) and returned.
    Column("progress", JSON, nullable=True),
    Column("result", JSON, nullable=True),
    Column("error", Text, nullable=True),
)

# -- retraining policies (mlharbor.registry.policies; migration 0006) ------------------------

policies = Table(
    "policies",
    metadata,
    # One current policy per endpoint: the validated spec as JSON and its revision (bumped by
    # a compare-and-set on every change; revisions never repeat for an endpoint).
    Column("endpoint", String(255), primary_key=True),
    Column("spec", JSON, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", String(255), nullable=False),
)

policy_revisions = Table(
    "policy_revisions",
    metadata,
    # Every revision ever applied (and each delete), so `policies show --revision N` and the
    # job that ran under revision N can be read back.
    Column("endpoint", String(255), primary_key=True),
    Column("revision", Integer, primary_key=True, autoincrement=False),
    Column("action", String(16), nullable=False),
    Column("spec", JSON, nullable=True),
    Column("actor", String(255), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)
