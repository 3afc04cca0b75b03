"""Retraining policies as stored state: one current policy per endpoint, every revision kept.

The policy's shape is :class:`mlharbor.pipelines.policy.Policy`; the registry sits below
pipelines, so this service takes any validated document with an ``endpoint`` and a
``to_dict()`` (:class:`PolicyDocument`) and hands back the stored spec as a mapping that
``policy_from_dict`` turns into a ``Policy`` again.

Every change is one audited transaction (``MetadataStore.mutate``: a refused change is
audited as a failure) that writes the ``policies`` row and appends to ``policy_revisions``.
Concurrency follows :mod:`mlharbor.registry.endpoints`: the row is locked (PostgreSQL; SQLite
serialises writers), the revision is bumped by a compare-and-set, and a caller that read the
policy first passes ``expected_revision`` (HTTP ``If-Match``, ``--revision``) to get a
:class:`ConflictError` naming the current revision when someone changed it meanwhile.
Revisions never repeat for an endpoint: a policy applied again after a delete continues after
the delete's revision, so a revision read before the delete can never match.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, delete, select, update

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import ConflictError, NotFoundError
from mlharbor.core.names import validate_name
from mlharbor.registry.endpoints import check_revision, endpoints_table
from mlharbor.registry.revisions import expect_revision, last_revision, next_revision
from mlharbor.registry.schema import models, policies, policy_revisions
from mlharbor.registry.store import aware

if TYPE_CHECKING:
    from mlharbor.registry.service import Registry


class PolicyDocument(Protocol):
    """A validated policy (``mlharbor.pipelines.policy.Policy``) as the registry sees it."""

    @property
    def endpoint(self) -> str: ...

    @property
    def model(self) -> str | None: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class StoredPolicy:
    """The current policy of an endpoint: its spec (JSON) and revision."""

    endpoint: str
    spec: dict[str, Any]
    revision: int
    created_at: datetime
    updated_at: datetime
    updated_by: str

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "revision": self.revision, "spec": self.spec,
                "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat(), "updated_by": self.updated_by}


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyRevision:
    """One entry of a policy's history: ``apply`` with the spec, or ``delete`` (spec None)."""

    endpoint: str
    revision: int
    action: str
    spec: dict[str, Any] | None
    actor: str
    reason: str
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "at": self.at.isoformat()}


@dataclasses.dataclass(frozen=True, slots=True)
class ApplyResult:
    """What :meth:`PolicyService.apply` did: ``created``, ``updated`` or ``unchanged``."""

    policy: StoredPolicy
    outcome: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.policy.to_dict(), "outcome": self.outcome}


class PolicyService:
    """Apply, read, list and delete retraining policies; every change audited."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.store = registry.store

    def apply(
        self, policy: PolicyDocument, *, actor: str, reason: str = "",
        request_id: str | None = None, expected_revision: int | None = None,
    ) -> ApplyResult:
        """Create the endpoint's policy or replace it with ``policy``.

        The endpoint (and ``model``, when named) must exist. Applying the spec already stored
        changes nothing (no new revision; still audited). With ``expected_revision`` the write
        happens only while the stored policy is at that revision.
        """
        endpoint = validate_name(policy.endpoint, kind="endpoint name")
        check_revision(expected_revision)
        spec = policy.to_dict()

        def work(conn: Connection) -> tuple[ApplyResult, dict[str, Any]]:
            self._check_endpoint(conn, endpoint)
            if policy.model is not None:
                self._check_model(conn, policy.model)
            row = self._row(conn, endpoint, required=False, lock=True)
            details: dict[str, Any] = {"expected_revision": expected_revision, "reason": reason}
            if row is None:
                if expected_revision is not None:
                    raise _stale(endpoint, expected_revision, None)
                revision, now = self._next_revision(conn, endpoint), utcnow()
                conn.execute(policies.insert().values(
                    endpoint=endpoint, spec=spec, revision=revision, created_at=now,
                    updated_at=now, updated_by=actor))
                self._record(conn, endpoint, revision, "apply", spec, actor, reason, now)
                return ApplyResult(self._stored(self._row(conn, endpoint)), "created"), {
                    **details, "revision": revision, "outcome": "created"}
            current = self._expect(endpoint, row, expected_revision)
            if row.spec == spec:
                return ApplyResult(self._stored(row), "unchanged"), {
                    **details, "revision": current, "outcome": "unchanged"}
            now = utcnow()
            done = conn.execute(update(policies).where(
                policies.c.endpoint == endpoint, policies.c.revision == current,
            ).values(revision=current + 1, spec=spec, updated_at=now, updated_by=actor))
            if done.rowcount != 1:
                latest = self._row(conn, endpoint, required=False)
                raise _stale(endpoint, current,
                             None if latest is None else int(latest.revision))
            self._record(conn, endpoint, current + 1, "apply", spec, actor, reason, now)
            return ApplyResult(self._stored(self._row(conn, endpoint)), "updated"), {
                **details, "revision": current + 1, "outcome": "updated"}

        return self.store.mutate("policy.apply", f"policy/{endpoint}", work, actor=actor,
                                 request_id=request_id)

    def delete(
        self, endpoint: str, *, actor: str, reason: str = "", request_id: str | None = None,
        expected_revision: int | None = None,
    ) -> None:
        """Delete the endpoint's policy (its history stays); nothing retrains it afterwards."""
        validate_name(endpoint, kind="endpoint name")
        check_revision(expected_revision)

        def work(conn: Connection) -> tuple[None, dict[str, Any]]:
            row = self._row(conn, endpoint, lock=True)
            revision = self._expect(endpoint, row, expected_revision)
            done = conn.execute(delete(policies).where(
                policies.c.endpoint == endpoint, policies.c.revision == revision))
            if done.rowcount != 1:
                raise _stale(endpoint, revision, None)
            self._record(conn, endpoint, revision + 1, "delete", None, actor, reason, utcnow())
            return None, {"revision": revision, "expected_revision": expected_revision,
                          "reason": reason}

        self.store.mutate("policy.delete", f"policy/{endpoint}", work, actor=actor,
                          request_id=request_id)

    def get(self, endpoint: str) -> StoredPolicy:
        """The endpoint's current policy (NotFoundError naming the known ones)."""
        validate_name(endpoint, kind="endpoint name")
        with self.store.db.read() as conn:
            return self._stored(self._row(conn, endpoint))

    def find(self, endpoint: str) -> StoredPolicy | None:
        """The endpoint's current policy, or None (for the trigger loop, which asks often)."""
        validate_name(endpoint, kind="endpoint name")
        with self.store.db.read() as conn:
            row = self._row(conn, endpoint, required=False)
        return None if row is None else self._stored(row)

    def revision(self, endpoint: str, revision: int) -> PolicyRevision:
        """One stored revision of the endpoint's policy (the spec a job ran under)."""
        validate_name(endpoint, kind="endpoint name")
        check_revision(revision)
        with self.store.db.read() as conn:
            row = conn.execute(select(policy_revisions).where(
                policy_revisions.c.endpoint == endpoint,
                policy_revisions.c.revision == revision)).first()
            if row is None:
                last = self._last_revision(conn, endpoint)
                if last is None:
                    raise NotFoundError(f"Endpoint {endpoint!r} never had a policy.")
                raise NotFoundError(
                    f"The policy of {endpoint!r} has no revision {revision}.",
                    hint=f"Its revisions run from 1 to {last}; "
                         f"see `mlharbor policies history {endpoint}`.")
        return self._revision(row)

    def list_policies(self) -> list[StoredPolicy]:
        with self.store.db.read() as conn:
            rows = conn.execute(select(policies).order_by(policies.c.endpoint)).all()
        return [self._stored(r) for r in rows]

    def history(self, endpoint: str) -> list[PolicyRevision]:
        """Every revision of the endpoint's policy, oldest first, deletes included."""
        validate_name(endpoint, kind="endpoint name")
        with self.store.db.read() as conn:
            rows = conn.execute(select(policy_revisions)
                                .where(policy_revisions.c.endpoint == endpoint)
                                .order_by(policy_revisions.c.revision)).all()
        if not rows:
            raise NotFoundError(f"Endpoint {endpoint!r} never had a policy.",
                                hint="Apply one with `mlharbor policies apply FILE`.")
        return [self._revision(r) for r in rows]

    # -- internals ------------------------------------------------------------------------

    def _check_endpoint(self, conn: Connection, endpoint: str) -> None:
        found = conn.execute(select(endpoints_table.c.id)
                             .where(endpoints_table.c.name == endpoint)).first()
        if found is None:
            known = sorted(r.name for r in conn.execute(select(endpoints_table.c.name)))
            raise NotFoundError(
                f"Endpoint {endpoint!r} does not exist, so no policy can watch it.",
                hint=f"Create it first (`mlharbor endpoints create`); known endpoints: "
                     f"{', '.join(known) or 'none'}.", field="endpoint")

    def _check_model(self, conn: Connection, name: str) -> None:
        if conn.execute(select(models.c.id).where(models.c.name == name)).first() is None:
            raise NotFoundError(f"Model {name!r} is not registered, so no policy can retrain "
                                f"it.", hint="Name a registered model, or leave `model` out "
                                "to retrain the champion's.", field="model")

    def _row(self, conn: Connection, endpoint: str, *, required: bool = True,
             lock: bool = False) -> Any:
        query = select(policies).where(policies.c.endpoint == endpoint)
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None and required:
            known = [r.endpoint for r in conn.execute(select(policies.c.endpoint))]
            raise NotFoundError(f"Endpoint {endpoint!r} has no policy.",
                                hint=f"Endpoints with a policy: "
                                     f"{', '.join(sorted(known)) or 'none'}.")
        return row

    def _expect(self, endpoint: str, row: Any, expected: int | None) -> int:
        return expect_revision(row, expected, lambda e, c: _stale(endpoint, e, c))

    def _last_revision(self, conn: Connection, endpoint: str) -> int | None:
        return last_revision(conn, policy_revisions.c.revision, policy_revisions.c.endpoint,
                             endpoint)

    def _next_revision(self, conn: Connection, endpoint: str) -> int:
        return next_revision(conn, policy_revisions.c.revision, policy_revisions.c.endpoint,
                             endpoint)

    def _record(self, conn: Connection, endpoint: str, revision: int, action: str,
                spec: dict[str, Any] | None, actor: str, reason: str, at: datetime) -> None:
        conn.execute(policy_revisions.insert().values(
            endpoint=endpoint, revision=revision, action=action, spec=spec, actor=actor,
            reason=reason, at=at))

    @staticmethod
    def _stored(row: Any) -> StoredPolicy:
        return StoredPolicy(row.endpoint, dict(row.spec), int(row.revision),
                            aware(row.created_at), aware(row.updated_at), row.updated_by)

    @staticmethod
    def _revision(row: Any) -> PolicyRevision:
        return PolicyRevision(row.endpoint, int(row.revision), row.action,
                              None if row.spec is None else dict(row.spec), row.actor,
                              row.reason, aware(row.at))


def _stale(endpoint: str, expected: int, current: int | None) -> ConflictError:
    if current is None:
        return ConflictError(
            f"The policy of {endpoint!r} does not exist (any more), so revision {expected} "
            "cannot be replaced.", hint="Apply it again without a revision to create it.",
            expected_revision=expected, current_revision=None)
    return ConflictError(
        f"The policy of {endpoint!r} is at revision {current}, not {expected}: it was changed "
        "after it was read, so this change was not applied.",
        hint=f"Read it again (`mlharbor policies show {endpoint}`), reapply on top of "
             f"revision {current} and retry.",
        expected_revision=expected, current_revision=current)
