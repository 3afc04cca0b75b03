"""Endpoints: the stored desired state of what serving answers, and the service that edits it.

An endpoint has a name (the one clients call), routes to model references with weights
(``churn@champion`` 90, ``churn@challenger`` 10), an optional shadow reference that sees a copy
of the traffic, a fallback chain (references, ``previous`` for the version the primary alias
pointed to before, then an optional fixed answer), batching settings, and limits. Serving
replicas poll this table and converge on it.

Every change is one audited transaction (``MetadataStore.mutate``) that also appends the full
spec to ``endpoint_history``: with the alias history, the deployment ledger.

Concurrency: every change bumps the endpoint's ``revision`` with a compare-and-set inside the
transaction (the row is locked on PostgreSQL; SQLite serialises writers), and a partial update
is merged into the row as it is *in that transaction*, so two concurrent edits never lose one
of them. A caller that read the endpoint first passes ``expected_revision`` (HTTP ``If-Match``)
and gets a :class:`ConflictError` naming the current revision when someone changed it
meanwhile; the refused attempt is audited as a failure. Revisions never repeat for a name: a
re-created endpoint continues after the last revision in its history, so a revision read
before a delete can never match the new endpoint.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    DateTime,
    Integer,
    String,
    Table,
    Text,
    delete,
    select,
    update,
)

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import ConflictError, InvalidInputError, NotFoundError
from mlharbor.core.names import validate_name
from mlharbor.core.refs import ModelRef
from mlharbor.registry.revisions import expect_revision, next_revision
from mlharbor.registry.schema import metadata
from mlharbor.registry.store import aware

if TYPE_CHECKING:
    from mlharbor.registry.service import Registry

PREVIOUS = "previous"

endpoints_table = Table(
    "endpoints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("spec", JSON, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", String(255), nullable=False),
)

endpoint_history = Table(
    "endpoint_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("endpoint", String(255), nullable=False, index=True),
    Column("revision", Integer, nullable=False),
    Column("action", String(16), nullable=False),
    Column("spec", JSON, nullable=True),
    Column("actor", String(255), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)


class RouteSpec(BaseModel):
    """Traffic to one model reference, in proportion to ``weight``."""

    model_config = ConfigDict(extra="forbid")
    ref: str = Field(..., min_length=1, max_length=300, description="churn@champion, churn:3")
    weight: float = Field(100.0, gt=0, le=1_000_000)

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str) -> str:
        return str(_parse_ref(value))


class BatchingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = None
    max_batch_size: int | None = Field(None, ge=1, le=100_000)
    max_wait_ms: float | None = Field(None, ge=0, le=1000)


class LimitsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout_ms: int | None = Field(None, ge=1, le=600_000)
    max_rows: int | None = Field(None, ge=1, le=10_000_000)


class DefaultAnswer(BaseModel):
    """The fixed answer at the end of a fallback chain."""

    model_config = ConfigDict(extra="forbid")
    prediction: str | int | float | bool


class EndpointSpec(BaseModel):
    """The desired state of one endpoint."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=255)
    description: str = Field("", max_length=2000)
    routes: list[RouteSpec] = Field(..., min_length=1, max_length=16)
    shadow: str | None = Field(None, max_length=300)
    fallback: list[str] = Field(default_factory=list, max_length=8)
    default_answer: DefaultAnswer | None = None
    sticky_header: str | None = Field(None, pattern=r"^[A-Za-z0-9-]{1,64}$")
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    # Opt-in: serve POST /v1/endpoints/{name}/explain and /v1/models/{name}:explain.
    explain: bool = Field(False, description="Serve feature attributions (explain routes).")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return validate_name(value, kind="endpoint name")
        except InvalidInputError as exc:
            raise ValueError(exc.message) from exc

    @field_validator("shadow")
    @classmethod
    def _shadow(cls, value: str | None) -> str | None:
        return None if value is None else str(_parse_ref(value))

    @field_validator("fallback")
    @classmethod
    def _fallback(cls, values: list[str]) -> list[str]:
        return [v if v == PREVIOUS else str(_parse_ref(v)) for v in values]

    def model_refs(self) -> list[str]:
        """Every model reference the endpoint names (routes, shadow, fallbacks)."""
        refs = [r.ref for r in self.routes] + [f for f in self.fallback if f != PREVIOUS]
        return refs + ([self.shadow] if self.shadow else [])

    @classmethod
    def parse(cls, body: Any) -> EndpointSpec:
        """Validate ``body``; pydantic errors become one InvalidInputError naming the field."""
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err.get("loc", ())) or "endpoint"
            ctx = err.get("ctx") or {}
            cause = ctx.get("error")
            message = str(cause) if cause is not None else err.get("msg", "invalid")
            raise InvalidInputError(
                f"Endpoint field {field!r}: {message}", field=field,
                expected=err.get("type"), received=_short(err.get("input")),
            ) from exc


def check_revision(value: int | None) -> int | None:
    """A revision precondition must be a positive whole number (or absent)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise InvalidInputError(f"The expected revision must be a positive whole number; "
                                f"received {value!r}.", field="revision")
    return value


def _merged(current: EndpointSpec, changes: dict[str, Any], *, replace: bool) -> EndpointSpec:
    """``changes`` applied on top of ``current`` (or instead of it, with ``replace``)."""
    merged = dict(changes) if replace else {**current.model_dump(), **changes}
    return EndpointSpec.parse({**merged, "name": current.name})


def _stale(name: str, expected: int, current: int | None) -> ConflictError:
    if current is None:
        return ConflictError(
            f"Endpoint {name!r} was deleted after revision {expected} was read.",
            hint="Create it again if it is still wanted.", expected_revision=expected,
            current_revision=None)
    return ConflictError(
        f"Endpoint {name!r} is at revision {current}, not {expected}: it was changed after "
        "it was read, so this change was not applied.",
        hint=f"Read it again, reapply the change on top of revision {current} and retry.",
        expected_revision=expected, current_revision=current)


def _parse_ref(value: str) -> ModelRef:
    try:
        return ModelRef.parse(value)
    except InvalidInputError as exc:
        raise ValueError(exc.message) from exc


def _short(value: Any) -> Any:
    text = repr(value)
    return value if isinstance(value, str | int | float | bool) and len(text) <= 200 \
        else text[:200]


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """A stored endpoint: its spec and revision (bumped by every change)."""

    spec: EndpointSpec
    revision: int
    created_at: datetime
    updated_at: datetime
    updated_by: str

    @property
    def name(self) -> str:
        return self.spec.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "revision": self.revision, "spec": self.spec.model_dump(),
                "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat(), "updated_by": self.updated_by}


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointChange:
    """One entry of the endpoint part of the deployment ledger."""

    endpoint: str
    revision: int
    action: str
    spec: dict[str, Any] | None
    actor: str
    reason: str
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "at": self.at.isoformat()}


class EndpointService:
    """Create, change, read and delete endpoints; every change audited and kept in the ledger."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.store = registry.store

    def create(
        self, body: EndpointSpec | dict[str, Any], *, actor: str, reason: str = "",
        request_id: str | None = None,
    ) -> Endpoint:
        spec = body if isinstance(body, EndpointSpec) else EndpointSpec.parse(body)
        self._check_refs(spec)

        def work(conn: Connection) -> tuple[Endpoint, dict[str, Any]]:
            if self._row(conn, spec.name, required=False) is not None:
                raise ConflictError(f"Endpoint {spec.name!r} already exists.",
                                    hint="Change it with `mlharbor endpoints update`.")
            now = utcnow()
            revision = self._next_revision(conn, spec.name)
            conn.execute(endpoints_table.insert().values(
                name=spec.name, spec=spec.model_dump(), revision=revision, created_at=now,
                updated_at=now, updated_by=actor))
            self._ledger(conn, spec.name, revision, "create", spec, actor, reason, now)
            return self._endpoint(self._row(conn, spec.name)), {"revision": revision,
                                                                  "reason": reason}

        return self.store.mutate("endpoint.create", f"endpoint/{spec.name}", work, actor=actor,
                                 request_id=request_id)

    def update(
        self, name: str, changes: dict[str, Any], *, actor: str, reason: str = "",
        request_id: str | None = None, replace: bool = False,
        expected_revision: int | None = None,
    ) -> Endpoint:
        """Apply ``changes`` (top-level fields; ``replace`` swaps the whole spec).

        ``expected_revision`` makes the write conditional: it happens only while the endpoint
        is still at that revision, else :class:`ConflictError` with ``current_revision``.
        Without it the write is unconditional but still atomic: the changes are merged into
        the endpoint as it is when the write commits, never into an older copy.
        """
        validate_name(name, kind="endpoint name")
        check_revision(expected_revision)
        if "name" in changes and changes["name"] != name:
            raise InvalidInputError("An endpoint cannot be renamed; create a new one.",
                                    field="name", expected=name, received=changes["name"])
        current = self.get(name)
        spec = _merged(current.spec, changes, replace=replace)
        self._check_refs(spec)

        def work(conn: Connection) -> tuple[Endpoint, dict[str, Any]]:
            row = self._row(conn, name, lock=True)
            revision = self._expect(name, row, expected_revision)
            # Someone else changed the endpoint since it was read above: merge into theirs.
            fresh = spec if replace or revision == current.revision else _merged(
                self._endpoint(row).spec, changes, replace=False)
            now = utcnow()
            self._compare_and_set(conn, name, row, values={
                "spec": fresh.model_dump(), "updated_at": now, "updated_by": actor})
            self._ledger(conn, name, revision + 1, "update", fresh, actor, reason, now)
            return self._endpoint(self._row(conn, name)), {
                "revision": revision + 1, "expected_revision": expected_revision,
                "changed": sorted(changes), "reason": reason}

        return self.store.mutate("endpoint.update", f"endpoint/{name}", work, actor=actor,
                                 request_id=request_id)

    def delete(
        self, name: str, *, actor: str, reason: str = "", request_id: str | None = None,
        expected_revision: int | None = None,
    ) -> None:
        """Delete ``name``; with ``expected_revision``, only while it is at that revision."""
        validate_name(name, kind="endpoint name")
        check_revision(expected_revision)

        def work(conn: Connection) -> tuple[None, dict[str, Any]]:
            row = self._row(conn, name, lock=True)
            revision = self._expect(name, row, expected_revision)
            done = conn.execute(delete(endpoints_table).where(
                endpoints_table.c.id == row.id, endpoints_table.c.revision == revision))
            if done.rowcount != 1:
                raise _stale(name, expected_revision or revision, None)
            self._ledger(conn, name, revision + 1, "delete", None, actor, reason, utcnow())
            return None, {"revision": revision, "expected_revision": expected_revision,
                          "reason": reason}

        self.store.mutate("endpoint.delete", f"endpoint/{name}", work, actor=actor,
                          request_id=request_id)

    def get(self, name: str) -> Endpoint:
        validate_name(name, kind="endpoint name")
        with self.store.db.read() as conn:
            return self._endpoint(self._row(conn, name))

    def list_endpoints(self) -> list[Endpoint]:
        with self.store.db.read() as conn:
            rows = conn.execute(select(endpoints_table).order_by(endpoints_table.c.name)).all()
        return [self._endpoint(r) for r in rows]

    def history(self, name: str) -> list[EndpointChange]:
        validate_name(name, kind="endpoint name")
        with self.store.db.read() as conn:
            rows = conn.execute(select(endpoint_history)
                                .where(endpoint_history.c.endpoint == name)
                                .order_by(endpoint_history.c.id)).all()
        if not rows:
            raise NotFoundError(f"Endpoint {name!r} has no history: it never existed.")
        return [EndpointChange(r.endpoint, int(r.revision), r.action, r.spec, r.actor,
                               r.reason, aware(r.at)) for r in rows]

    # -- internals ------------------------------------------------------------------------

    def _check_refs(self, spec: EndpointSpec) -> None:
        """Every named model must exist; versions and aliases must resolve."""
        for ref in spec.model_refs():
            self.registry.get_version(ref)

    def _row(
        self, conn: Connection, name: str, *, required: bool = True, lock: bool = False
    ) -> Any:
        query = select(endpoints_table).where(endpoints_table.c.name == name)
        if lock:
            # PostgreSQL: concurrent writers of one endpoint queue here and each then reads
            # the row its predecessor committed (SQLite's BEGIN IMMEDIATE already serialises).
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None and required:
            known = [r.name for r in conn.execute(select(endpoints_table.c.name))]
            raise NotFoundError(f"Endpoint {name!r} does not exist.",
                                hint=f"Known endpoints: {', '.join(sorted(known)) or 'none'}.")
        return row

    def _expect(self, name: str, row: Any, expected: int | None) -> int:
        """The row's revision, refusing the write when the caller expected another one."""
        return expect_revision(row, expected, lambda e, c: _stale(name, e, c))

    def _compare_and_set(
        self, conn: Connection, name: str, row: Any, *, values: dict[str, Any]
    ) -> None:
        """Write ``values`` and bump the revision only if nobody bumped it first."""
        revision = int(row.revision)
        done = conn.execute(update(endpoints_table).where(
            endpoints_table.c.id == row.id, endpoints_table.c.revision == revision,
        ).values(revision=revision + 1, **values))
        if done.rowcount != 1:
            current = self._row(conn, name, required=False)
            raise _stale(name, revision, None if current is None else int(current.revision))

    def _next_revision(self, conn: Connection, name: str) -> int:
        return next_revision(conn, endpoint_history.c.revision, endpoint_history.c.endpoint,
                             name)

    def _endpoint(self, row: Any) -> Endpoint:
        return Endpoint(EndpointSpec.model_validate(row.spec), int(row.revision),
                        aware(row.created_at), aware(row.updated_at), row.updated_by)

    def _ledger(
        self, conn: Connection, name: str, revision: int, action: str,
        spec: EndpointSpec | None, actor: str, reason: str, at: datetime,
    ) -> None:
        conn.execute(endpoint_history.insert().values(
            endpoint=name, revision=revision, action=action,
            spec=None if spec is None else spec.model_dump(), actor=actor, reason=reason, at=at))
