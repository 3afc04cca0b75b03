"""SQL reads and writes of the registry's metadata, each write audited in its own transaction.

The store knows tables and transactions; the rules users see (what may be deleted, which
version a reference means) are enforced here too, because they must hold under concurrency:
the check and the change happen in one transaction.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, delete, func, select, update

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import (
    ConflictError,
    InvalidInputError,
    MlharborError,
    NotFoundError,
)
from mlharbor.core.records import (
    AliasMove,
    ModelVersion,
    Page,
    RegisteredModel,
    VersionFile,
    VersionStatus,
)
from mlharbor.core.refs import ModelRef
from mlharbor.registry import audit, notify
from mlharbor.registry.database import Database
from mlharbor.registry.schema import alias_history, aliases, models, version_files, versions

T = TypeVar("T")
MAX_PAGE_SIZE = 1000


class MetadataStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- audited writes -------------------------------------------------------------------

    def mutate(
        self, action: str, resource: str, work: Callable[[Connection], tuple[T, dict[str, Any]]],
        *, actor: str, request_id: str | None = None,
    ) -> T:
        """Run ``work`` and append its audit record in one transaction.

        When ``work`` raises an mlharbor error nothing it did is kept and a ``failure`` record
        is written on its own, so every attempted change leaves exactly one audit record.
        """
        try:
            with self.db.write() as conn:
                result, details = work(conn)
                notify.publish(conn, action, resource)  # delivered at commit only
                self.db.lock_audit_chain(conn)
                audit.append(conn, actor=actor, action=action, resource=resource,
                             outcome="success", details=details, request_id=request_id)
                return result
        except MlharborError as exc:
            with contextlib.suppress(MlharborError):
                self.record(actor=actor, action=action, resource=resource, outcome="failure",
                            details={"error": exc.code, "message": exc.message},
                            request_id=request_id)
            raise

    def record(
        self, *, actor: str, action: str, resource: str, outcome: audit.Outcome,
        details: dict[str, Any] | None = None, request_id: str | None = None,
    ) -> audit.AuditEvent:
        """Append an audit record on its own (denied attempts, failures)."""
        with self.db.write() as conn:
            self.db.lock_audit_chain(conn)
            return audit.append(conn, actor=actor, action=action, resource=resource,
                                outcome=outcome, details=details, request_id=request_id)

    # -- models ---------------------------------------------------------------------------

    def create_model(
        self, name: str, *, description: str, tags: dict[str, str], actor: str,
        request_id: str | None = None,
    ) -> RegisteredModel:
        def work(conn: Connection) -> tuple[RegisteredModel, dict[str, Any]]:
            if self._model_row(conn, name, required=False) is not None:
                raise ConflictError(
                    f"Model {name!r} already exists.",
                    hint="Register a new version of it, or pick another name.",
                )
            self._insert_model(conn, name, description, tags)
            return self._model(conn, name), {"description": description, "tags": tags}

        return self.mutate("model.create", f"model/{name}", work, actor=actor,
                           request_id=request_id)

    def _insert_model(
        self, conn: Connection, name: str, description: str, tags: dict[str, str]
    ) -> None:
        now = utcnow()
        conn.execute(models.insert().values(
            name=name, description=description, tags=tags, last_version=0,
            created_at=now, updated_at=now,
        ))

    def update_model(
        self, name: str, *, description: str | None, tags: dict[str, str] | None, actor: str,
        request_id: str | None = None,
    ) -> RegisteredModel:
        def work(conn: Connection) -> tuple[RegisteredModel, dict[str, Any]]:
            row = self._model_row(conn, name)
            values: dict[str, Any] = {"updated_at": utcnow()}
            if description is not None:
                values["description"] = description
            if tags is not None:
                values["tags"] = {**(row.tags or {}), **tags}
            conn.execute(update(models).where(models.c.id == row.id).values(**values))
            return self._model(conn, name), {"description": description, "tags": tags}

        return self.mutate("model.update", f"model/{name}", work, actor=actor,
                           request_id=request_id)

    def delete_model(self, name: str, *, actor: str, request_id: str | None = None) -> None:
        def work(conn: Connection) -> tuple[None, dict[str, Any]]:
            row = self._model_row(conn, name)
            held = conn.execute(
                select(aliases.c.alias, versions.c.version)
                .join(versions, versions.c.id == aliases.c.version_id)
                .where(aliases.c.model_id == row.id)
            ).all()
            if held:
                names = ", ".join(f"@{a.alias} -> {a.version}" for a in held)
                raise ConflictError(
                    f"Model {name!r} cannot be deleted while aliases point at its versions "
                    f"({names}).",
                    hint="Remove the aliases first (mlharbor models alias unset).",
                    aliases=[a.alias for a in held],
                )
            busy = [r.version for r in conn.execute(select(versions.c.version).where(
                versions.c.model_id == row.id,
                versions.c.status == VersionStatus.REGISTERING.value))]
            if busy:
                raise ConflictError(
                    f"Model {name!r} cannot be deleted while version(s) "
                    f"{', '.join(map(str, busy))} are registering.",
                    hint="Wait for the registration to finish, or sweep abandoned ones with "
                    "`mlharbor models sweep`.",
                )
            ids = select(versions.c.id).where(versions.c.model_id == row.id)
            conn.execute(delete(version_files).where(version_files.c.version_id.in_(ids)))
            conn.execute(delete(versions).where(versions.c.model_id == row.id))
            conn.execute(delete(alias_history).where(alias_history.c.model_name == name))
            conn.execute(delete(models).where(models.c.id == row.id))
            return None, {}

        self.mutate("model.delete", f"model/{name}", work, actor=actor, request_id=request_id)

    def get_model(self, name: str) -> RegisteredModel:
        with self.db.read() as conn:
            return self._model(conn, name)

    def list_models(
        self, *, name_contains: str | None = None, tags: dict[str, str] | None = None,
        page_size: int = 100, page_token: str | None = None,
    ) -> Page[RegisteredModel]:
        offset = decode_page_token(page_token)
        page_size = check_page_size(page_size)
        with self.db.read() as conn:
            query = select(models.c.name).order_by(models.c.name)
            if name_contains:
                # a search box: case-blind on both databases
                query = query.where(models.c.name.icontains(name_contains, autoescape=True))
            names = [r.name for r in conn.execute(query)]
            if tags:
                rows = conn.execute(select(models.c.name, models.c.tags)).all()
                tagged = {r.name for r in rows if _tags_match(r.tags, tags)}
                names = [n for n in names if n in tagged]
            chosen = names[offset:offset + page_size]
            items = [self._model(conn, n) for n in chosen]
        return _page(items, offset, page_size, len(names))

    def _model_row(self, conn: Connection, name: str, *, required: bool = True) -> Any:
        query = select(models).where(models.c.name == name)
        if conn.get_execution_options().get("mlharbor_write"):
            # Every change to a model, its versions or aliases starts here, so on PostgreSQL
            # the row lock makes check-then-write sequences of one model run one at a time
            # (SQLite's BEGIN IMMEDIATE already serialises all writers).
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None and required:
            raise NotFoundError(
                f"Model {name!r} does not exist.",
                hint="List models with `mlharbor models list`.",
            )
        return row

    def _model(self, conn: Connection, name: str) -> RegisteredModel:
        row = self._model_row(conn, name)
        latest = conn.execute(
            select(func.max(versions.c.version)).where(
                versions.c.model_id == row.id,
                versions.c.status == VersionStatus.READY.value,
                versions.c.archived.is_(False),
            )
        ).scalar()
        alias_rows = conn.execute(
            select(aliases.c.alias, versions.c.version)
            .join(versions, versions.c.id == aliases.c.version_id)
            .where(aliases.c.model_id == row.id)
        ).all()
        return RegisteredModel(
            name=row.name, description=row.description, tags=dict(row.tags or {}),
            created_at=aware(row.created_at), updated_at=aware(row.updated_at),
            latest_version=latest, aliases={a.alias: a.version for a in alias_rows},
        )

    # -- versions -------------------------------------------------------------------------

    def begin_version(
        self, name: str, *, actor: str, description: str, tags: dict[str, str],
        metrics: dict[str, float], params: dict[str, str], lineage: dict[str, Any],
    ) -> tuple[int, int]:
        """Allocate the next version number in status ``registering``; returns (id, version).

        Short and unaudited: the registration is audited once, when it is finished.
        """
        for attempt in range(3):
            try:
                with self.db.write() as conn:
                    if self._model_row(conn, name, required=False) is None:
                        self._insert_model(conn, name, "", {})
                    number = conn.execute(
                        update(models).where(models.c.name == name)
                        .values(last_version=models.c.last_version + 1, updated_at=utcnow())
                        .returning(models.c.id, models.c.last_version)
                    ).one()
                    now = utcnow()
                    version_id = conn.execute(versions.insert().values(
                        model_id=number.id, version=number.last_version,
                        status=VersionStatus.REGISTERING.value, status_reason=None,
                        archived=False, description=description, tags=tags, metrics=metrics,
                        params=params, lineage=lineage, manifest=None, created_by=actor,
                        created_at=now, updated_at=now,
                    ).returning(versions.c.id)).scalar_one()
                    return int(version_id), int(number.last_version)
            except ConflictError:
                # Two writers created the same new model at once on PostgreSQL; the loser
                # retries and now finds the model.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def finish_version(
        self, version_id: int, *, status: VersionStatus, status_reason: str | None,
        files: list[VersionFile], manifest: dict[str, Any] | None, actor: str,
        request_id: str | None = None,
    ) -> ModelVersion:
        name, number = self._version_name(version_id)

        def work(conn: Connection) -> tuple[ModelVersion, dict[str, Any]]:
            self._model_row(conn, name)  # lock the model
            # Only a version still registering may be finished: whoever comes second (the
            # registering process or the stale-registration sweeper) gets a conflict.
            changed = conn.execute(update(versions).where(
                versions.c.id == version_id,
                versions.c.status == VersionStatus.REGISTERING.value,
            ).values(status=status.value, status_reason=status_reason, manifest=manifest,
                     updated_at=utcnow())).rowcount
            if changed != 1:
                current = conn.execute(
                    select(versions.c.status).where(versions.c.id == version_id)).first()
                raise ConflictError(
                    f"Version {name}:{number} is "
                    f"{current.status if current else 'deleted'}, not registering; it cannot "
                    "be finished again.",
                    hint="Register the model again.",
                )
            if files:
                conn.execute(version_files.insert(), [
                    {"version_id": version_id, "path": f.path, "sha256": f.sha256,
                     "size": f.size} for f in files
                ])
            details = {"status": status.value, "reason": status_reason,
                       "files": len(files)}
            fresh = conn.execute(select(versions).where(versions.c.id == version_id)).one()
            return self._version(conn, fresh), details

        return self.mutate("version.register", f"model/{name}/version/{number}", work,
                           actor=actor, request_id=request_id)

    def _version_name(self, version_id: int) -> tuple[str, int]:
        with self.db.read() as conn:
            row = conn.execute(
                select(models.c.name, versions.c.version)
                .join(models, models.c.id == versions.c.model_id)
                .where(versions.c.id == version_id)
            ).first()
        if row is None:
            raise ConflictError(
                "The version being registered was deleted before it was finished.",
                hint="Register the model again.",
            )
        return str(row.name), int(row.version)

    def get_version(self, ref: ModelRef) -> ModelVersion:
        with self.db.read() as conn:
            return self._version(conn, self._resolve(conn, ref))

    def list_versions(
        self, name: str, *, status: VersionStatus | None = None, include_archived: bool = True,
        tags: dict[str, str] | None = None, page_size: int = 100,
        page_token: str | None = None,
    ) -> Page[ModelVersion]:
        offset = decode_page_token(page_token)
        page_size = check_page_size(page_size)
        with self.db.read() as conn:
            model = self._model_row(conn, name)
            query = select(versions).where(versions.c.model_id == model.id)
            if status is not None:
                query = query.where(versions.c.status == status.value)
            if not include_archived:
                query = query.where(versions.c.archived.is_(False))
            rows = conn.execute(query.order_by(versions.c.version.desc())).all()
            if tags:
                rows = [r for r in rows if _tags_match(r.tags, tags)]
            items = [self._version(conn, r) for r in rows[offset:offset + page_size]]
        return _page(items, offset, page_size, len(rows))

    def set_archived(
        self, ref: ModelRef, archived: bool, *, actor: str, request_id: str | None = None
    ) -> ModelVersion:
        def work(conn: Connection) -> tuple[ModelVersion, dict[str, Any]]:
            row = self._resolve(conn, ref)
            if archived:
                self._refuse_if_aliased(conn, row, "archived")
            conn.execute(update(versions).where(versions.c.id == row.id)
                         .values(archived=archived, updated_at=utcnow()))
            fresh = conn.execute(select(versions).where(versions.c.id == row.id)).one()
            return self._version(conn, fresh), {"archived": archived}

        action = "version.archive" if archived else "version.unarchive"
        return self.mutate(action, _resource(ref), work, actor=actor, request_id=request_id)

    def update_version(
        self, ref: ModelRef, *, description: str | None, tags: dict[str, str] | None,
        actor: str, request_id: str | None = None, lineage: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Only the description, tags and lineage entries of a version may change; its
        contents never do. The audit records which lineage keys were set, not their values."""
        def work(conn: Connection) -> tuple[ModelVersion, dict[str, Any]]:
            row = self._resolve(conn, ref)
            values: dict[str, Any] = {"updated_at": utcnow()}
            if description is not None:
                values["description"] = description
            if tags is not None:
                values["tags"] = {**(row.tags or {}), **tags}
            if lineage is not None:
                values["lineage"] = {**(row.lineage or {}), **lineage}
            conn.execute(update(versions).where(versions.c.id == row.id).values(**values))
            fresh = conn.execute(select(versions).where(versions.c.id == row.id)).one()
            details: dict[str, Any] = {"description": description, "tags": tags}
            if lineage is not None:
                details["lineage"] = sorted(lineage)
            return self._version(conn, fresh), details

        return self.mutate("version.update", _resource(ref), work, actor=actor,
                           request_id=request_id)

    def delete_version(
        self, ref: ModelRef, *, actor: str, request_id: str | None = None
    ) -> None:
        """Delete a version's record.

        Its blobs stay in the artifact store: identical files are stored once, and a
        registration in progress may be relying on a blob no finished version lists yet, so
        blobs are never removed inline.
        """
        def work(conn: Connection) -> tuple[None, dict[str, Any]]:
            row = self._resolve(conn, ref)
            self._refuse_if_aliased(conn, row, "deleted")
            if row.status == VersionStatus.REGISTERING.value:
                raise ConflictError(
                    f"Version {ref} is still registering; it cannot be deleted now.",
                    hint="Wait for it to finish, or sweep abandoned registrations with "
                    "`mlharbor models sweep`.",
                )
            conn.execute(delete(version_files).where(version_files.c.version_id == row.id))
            conn.execute(delete(versions).where(versions.c.id == row.id))
            return None, {"version": row.version}

        self.mutate("version.delete", _resource(ref), work, actor=actor, request_id=request_id)

    def _refuse_if_aliased(self, conn: Connection, row: Any, verb: str) -> None:
        held = [r.alias for r in conn.execute(
            select(aliases.c.alias).where(aliases.c.version_id == row.id))]
        if held:
            name = self._name_of(conn, row.model_id)
            shown = ", ".join(f"@{a}" for a in sorted(held))
            raise ConflictError(
                f"Version {name}:{row.version} cannot be {verb}: alias {shown} points to it.",
                hint=f"Move or remove the alias first (mlharbor models alias set {name} "
                f"{sorted(held)[0]} VERSION).",
                aliases=sorted(held),
            )

    def sweep_stale(self, older_than: timedelta, *, actor: str = "system") -> list[str]:
        """Mark registrations abandoned for longer than ``older_than`` as failed."""
        cutoff = utcnow() - older_than
        with self.db.read() as conn:
            stale = conn.execute(
                select(versions.c.id).where(
                    versions.c.status == VersionStatus.REGISTERING.value,
                    versions.c.created_at < cutoff,
                )
            ).all()
        swept = []
        for row in stale:
            with contextlib.suppress(ConflictError):
                mv = self.finish_version(
                    row.id, status=VersionStatus.FAILED,
                    status_reason="registration was interrupted and never finished",
                    files=[], manifest=None, actor=actor,
                )
                swept.append(mv.ref)
        return swept

    # -- aliases --------------------------------------------------------------------------

    def set_alias(
        self, name: str, alias: str, version: int, *, actor: str, reason: str = "",
        request_id: str | None = None, guard: Callable[[ModelVersion, str], None] | None = None,
    ) -> AliasMove:
        """Point ``alias`` at ``version``; ``guard`` may refuse (e.g. signature policy)."""
        def work(conn: Connection) -> tuple[AliasMove, dict[str, Any]]:
            target = self._resolve(conn, ModelRef(name, "version", version=version))
            if target.status != VersionStatus.READY.value:
                raise ConflictError(
                    f"Version {name}:{version} is {target.status}; only a ready version can "
                    f"receive an alias.",
                    hint=str(target.status_reason or ""),
                )
            if target.archived:
                raise ConflictError(
                    f"Version {name}:{version} is archived; unarchive it before giving it an "
                    "alias."
                )
            if guard is not None:
                guard(self._version(conn, target), alias)
            current = conn.execute(
                select(aliases.c.version_id, versions.c.version)
                .join(versions, versions.c.id == aliases.c.version_id)
                .where(aliases.c.model_id == target.model_id, aliases.c.alias == alias)
            ).first()
            now = utcnow()
            if current is None:
                conn.execute(aliases.insert().values(
                    model_id=target.model_id, alias=alias, version_id=target.id, updated_at=now))
            else:
                conn.execute(update(aliases).where(
                    aliases.c.model_id == target.model_id, aliases.c.alias == alias,
                ).values(version_id=target.id, updated_at=now))
            move = self._record_move(conn, name, alias, current.version if current else None,
                                     version, actor, reason, now)
            return move, {"from": move.from_version, "to": version, "reason": reason}

        return self.mutate("alias.set", f"model/{name}/alias/{alias}", work, actor=actor,
                           request_id=request_id)

    def delete_alias(
        self, name: str, alias: str, *, actor: str, reason: str = "",
        request_id: str | None = None,
    ) -> AliasMove:
        def work(conn: Connection) -> tuple[AliasMove, dict[str, Any]]:
            model = self._model_row(conn, name)
            current = conn.execute(
                select(versions.c.version)
                .join(aliases, versions.c.id == aliases.c.version_id)
                .where(aliases.c.model_id == model.id, aliases.c.alias == alias)
            ).first()
            if current is None:
                raise NotFoundError(f"Model {name!r} has no alias {alias!r}.")
            conn.execute(delete(aliases).where(
                aliases.c.model_id == model.id, aliases.c.alias == alias))
            move = self._record_move(conn, name, alias, current.version, None, actor, reason,
                                     utcnow())
            return move, {"from": current.version, "reason": reason}

        return self.mutate("alias.delete", f"model/{name}/alias/{alias}", work, actor=actor,
                           request_id=request_id)

    def _record_move(
        self, conn: Connection, name: str, alias: str, from_version: int | None,
        to_version: int | None, actor: str, reason: str, at: datetime,
    ) -> AliasMove:
        conn.execute(alias_history.insert().values(
            model_name=name, alias=alias, from_version=from_version, to_version=to_version,
            actor=actor, reason=reason, at=at,
        ))
        return AliasMove(name, alias, from_version, to_version, actor, reason, at)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        with self.db.read() as conn:
            self._model_row(conn, name)
            query = select(alias_history).where(alias_history.c.model_name == name)
            if alias is not None:
                query = query.where(alias_history.c.alias == alias)
            rows = conn.execute(query.order_by(alias_history.c.id)).all()
        return [AliasMove(r.model_name, r.alias, r.from_version, r.to_version, r.actor,
                          r.reason, aware(r.at)) for r in rows]

    # -- resolution -----------------------------------------------------------------------

    def _resolve(self, conn: Connection, ref: ModelRef) -> Any:
        model = self._model_row(conn, ref.name)
        if ref.kind == "version":
            row = conn.execute(select(versions).where(
                versions.c.model_id == model.id, versions.c.version == ref.version)).first()
            if row is None:
                raise NotFoundError(
                    f"Model {ref.name!r} has no version {ref.version}.",
                    hint=f"See `mlharbor models versions {ref.name}`.",
                )
            return row
        if ref.kind == "alias":
            row = conn.execute(
                select(versions).join(aliases, aliases.c.version_id == versions.c.id)
                .where(aliases.c.model_id == model.id, aliases.c.alias == ref.alias)
            ).first()
            if row is None:
                known = sorted(r.alias for r in conn.execute(
                    select(aliases.c.alias).where(aliases.c.model_id == model.id)))
                raise NotFoundError(
                    f"Model {ref.name!r} has no alias {ref.alias!r}.",
                    hint=f"Known aliases: {', '.join(known) or 'none'}.",
                )
            return row
        row = conn.execute(select(versions).where(
            versions.c.model_id == model.id,
            versions.c.status == VersionStatus.READY.value,
            versions.c.archived.is_(False),
        ).order_by(versions.c.version.desc()).limit(1)).first()
        if row is None:
            raise NotFoundError(f"Model {ref.name!r} has no ready, unarchived version yet.")
        return row

    def _name_of(self, conn: Connection, model_id: int) -> str:
        return str(conn.execute(select(models.c.name).where(models.c.id == model_id)).scalar())

    def _version(self, conn: Connection, row: Row[Any] | Any) -> ModelVersion:
        name = self._name_of(conn, row.model_id)
        files = tuple(VersionFile(f.path, f.sha256, int(f.size)) for f in conn.execute(
            select(version_files).where(version_files.c.version_id == row.id)
            .order_by(version_files.c.path)))
        held = tuple(sorted(r.alias for r in conn.execute(
            select(aliases.c.alias).where(aliases.c.version_id == row.id))))
        return ModelVersion(
            name=name, version=int(row.version), status=VersionStatus(row.status),
            archived=bool(row.archived), description=row.description,
            created_at=aware(row.created_at), created_by=row.created_by,
            status_reason=row.status_reason, tags=dict(row.tags or {}),
            metrics=dict(row.metrics or {}), params=dict(row.params or {}),
            lineage=dict(row.lineage or {}), manifest=row.manifest, files=files, aliases=held,
        )

    def iter_audit(self, since: datetime | None = None) -> Iterator[audit.AuditEvent]:
        with self.db.read() as conn:
            yield from audit.iter_events(conn, since=since)


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _resource(ref: ModelRef) -> str:
    if ref.kind == "version":
        return f"model/{ref.name}/version/{ref.version}"
    return f"model/{ref.name}/{ref.kind}/{ref.alias or 'latest'}"


def _tags_match(stored: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    stored = stored or {}
    return all(stored.get(k) == v for k, v in wanted.items())


def check_page_size(page_size: int) -> int:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidInputError(
            f"page_size must be between 1 and {MAX_PAGE_SIZE}; received {page_size}.",
            field="page_size",
        )
    return page_size


def decode_page_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = int(base64.urlsafe_b64decode(token.encode() + b"==").decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(
            "page_token is not a token this server issued.",
            hint="Pass the next_page_token of the previous page unchanged.",
            field="page_token",
        ) from exc
    if offset < 0:
        raise InvalidInputError("page_token is not a token this server issued.",
                                field="page_token")
    return offset


def _page(items: list[T], offset: int, page_size: int, total: int) -> Page[T]:
    nxt = offset + page_size
    token = base64.urlsafe_b64encode(str(nxt).encode()).decode().rstrip("=") if nxt < total \
        else None
    return Page(items=items, next_page_token=token, total=total)

