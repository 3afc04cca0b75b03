"""Users, service accounts, their role bindings and API keys, in the metadata database.

:class:`IdentityStore` receives a SQLAlchemy engine and an audit sink from the edge that opens
it (the registry's, in practice), so security never imports the registry. Every change is
written to the audit trail through the sink with the acting identity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import OperationalError

from mlharbor.core.clock import utcnow
from mlharbor.core.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)
from mlharbor.security import apikeys
from mlharbor.security.policy import GLOBAL, Grant, Principal, check_role, check_scope
from mlharbor.security.schema import api_keys, identities, role_bindings

KINDS = ("user", "service")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_PG_ADMIN_INIT_LOCK = 0x6D6C6803


class AuditSink(Protocol):
    """Appends one audit record (``MetadataStore.record`` fits)."""

    def __call__(self, *, actor: str, action: str, resource: str, outcome: Any,
                 details: dict[str, Any] | None = None,
                 request_id: str | None = None) -> object: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    name: str
    kind: str
    description: str
    disabled: bool
    grants: tuple[Grant, ...]
    created_at: datetime
    created_by: str


@dataclasses.dataclass(frozen=True, slots=True)
class KeyInfo:
    """An API key as listed: never the key itself, only its visible prefix."""

    prefix: str
    identity: str
    label: str
    roles: tuple[str, ...] | None
    scopes: tuple[str, ...] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utcnow():
            return "expired"
        return "active"


# Execution option marking a transaction that changes identities, keys or grants.
_CHANGES_IDENTITIES = "mlharbor_identity_change"


@contextlib.contextmanager
def transaction(engine: Engine, *, write: bool, checking: str,
                changes_identities: bool = False) -> Iterator[Connection]:
    """A transaction on the metadata database (``write`` takes the writer's path); a database
    that cannot be reached is an UnavailableError saying what was being ``checking``.
    ``changes_identities`` marks it, so every :class:`IdentityStore` on the engine counts its
    commit in its ``generation``."""
    try:
        with engine.connect() as conn:
            if write:
                conn = conn.execution_options(mlharbor_write=True)
            if changes_identities:
                conn = conn.execution_options(**{_CHANGES_IDENTITIES: True})
            with conn.begin():
                yield conn
    except OperationalError as exc:
        raise UnavailableError(
            f"The metadata database is unavailable while checking {checking}.",
            hint="Check that the database is running and MLHARBOR_DATABASE_URL is right.",
        ) from exc


class IdentityStore:
    """Identities, role bindings and API keys.

    ``generation`` counts the committed changes to identities, keys and grants made through
    any IdentityStore on the same engine in this process: a cache of verified keys (the
    control plane's, see :class:`~mlharbor.security.middleware.AuthMiddleware`) starts afresh
    when it moves, so a revocation made here applies at once.
    """

    def __init__(self, engine: Engine, *, audit: AuditSink | None = None) -> None:
        from sqlalchemy import event

        self.engine = engine
        self.audit = audit
        self.generation = 0
        event.listen(engine, "commit", self._on_commit)

    def _on_commit(self, conn: Connection) -> None:
        if conn.get_execution_options().get(_CHANGES_IDENTITIES):
            self.generation += 1

    # -- transactions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self, *, write: bool) -> Iterator[Connection]:
        with transaction(self.engine, write=write, checking="identities",
                         changes_identities=write) as conn:
            yield conn

    def _audit(self, actor: str, action: str, resource: str, details: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit(actor=actor, action=action, resource=resource, outcome="success",
                       details=details)

    # -- identities -----------------------------------------------------------------------

    def create_identity(
        self, name: str, *, kind: str = "user", grants: Sequence[Grant | str] = (),
        description: str = "", actor: str,
    ) -> Identity:
        name = check_identity_name(name)
        if kind not in KINDS:
            raise InvalidInputError(f"kind must be one of {', '.join(KINDS)}; received {kind!r}.")
        parsed = [g if isinstance(g, Grant) else Grant.parse(g) for g in grants]
        try:
            with self._tx(write=True) as conn:
                self._insert_identity(conn, name, kind, description, parsed, actor)
        except SAIntegrityError as exc:
            raise ConflictError(f"An identity named {name!r} already exists.",
                                hint="Pick another name or grant roles to it.") from exc
        self._audit(actor, "identity.create", f"identity/{name}",
                    {"kind": kind, "grants": [str(g) for g in parsed]})
        return self.get_identity(name)

    def _insert_identity(self, conn: Connection, name: str, kind: str, description: str,
                         grants: Sequence[Grant], actor: str) -> int:
        now = utcnow()
        identity_id = conn.execute(identities.insert().values(
            name=name, kind=kind, description=description, disabled=False,
            created_by=actor, created_at=now,
        ).returning(identities.c.id)).scalar_one()
        for g in dict.fromkeys(grants):
            conn.execute(role_bindings.insert().values(
                identity_id=identity_id, role=g.role, scope=g.scope, created_by=actor,
                created_at=now))
        return int(identity_id)

    def get_identity(self, name: str) -> Identity:
        with self._tx(write=False) as conn:
            return self._identity(conn, self._identity_row(conn, name))

    def list_identities(self, kind: str | None = None) -> list[Identity]:
        with self._tx(write=False) as conn:
            query = select(identities).order_by(identities.c.name)
            if kind is not None:
                query = query.where(identities.c.kind == kind)
            return [self._identity(conn, row) for row in conn.execute(query).all()]

    def set_disabled(self, name: str, disabled: bool, *, actor: str) -> Identity:
        with self._tx(write=True) as conn:
            row = self._identity_row(conn, name)
            conn.execute(update(identities).where(identities.c.id == row.id)
                         .values(disabled=disabled))
        self._audit(actor, "identity.disable" if disabled else "identity.enable",
                    f"identity/{name}", {})
        return self.get_identity(name)

    def grant(self, name: str, grant: Grant | str, *, actor: str) -> Identity:
        g = grant if isinstance(grant, Grant) else Grant.parse(grant)
        with self._tx(write=True) as conn:
            row = self._identity_row(conn, name)
            exists = conn.execute(select(role_bindings.c.id).where(
                role_bindings.c.identity_id == row.id, role_bindings.c.role == g.role,
                role_bindings.c.scope == g.scope)).first()
            if exists is None:
                conn.execute(role_bindings.insert().values(
                    identity_id=row.id, role=g.role, scope=g.scope, created_by=actor,
                    created_at=utcnow()))
        self._audit(actor, "role.grant", f"identity/{name}", {"grant": str(g)})
        return self.get_identity(name)

    def revoke_grant(self, name: str, grant: Grant | str, *, actor: str) -> Identity:
        g = grant if isinstance(grant, Grant) else Grant.parse(grant)
        with self._tx(write=True) as conn:
            row = self._identity_row(conn, name)
            gone = conn.execute(role_bindings.delete().where(
                role_bindings.c.identity_id == row.id, role_bindings.c.role == g.role,
                role_bindings.c.scope == g.scope)).rowcount
        if not gone:
            raise NotFoundError(f"{name!r} has no grant {str(g)!r}.")
        self._audit(actor, "role.revoke", f"identity/{name}", {"grant": str(g)})
        return self.get_identity(name)

    def admin_exists(self) -> bool:
        with self._tx(write=False) as conn:
            return conn.execute(select(role_bindings.c.id).where(
                role_bindings.c.role == "admin").limit(1)).first() is not None

    def init_admin(self, name: str = "admin", *, actor: str,
                   label: str = "initial admin key") -> tuple[Identity, str]:
        """Create the first admin and its key; refused once any admin exists."""
        name = check_identity_name(name)
        with self._tx(write=True) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                             {"k": _PG_ADMIN_INIT_LOCK})
            if conn.execute(select(role_bindings.c.id).where(
                    role_bindings.c.role == "admin").limit(1)).first() is not None:
                raise ConflictError(
                    "An admin already exists; `admin init` only sets up a fresh installation.",
                    hint="Ask an admin for a key, or create one with "
                         "`mlharbor admin keys create NAME`.",
                )
            if self._identity_row(conn, name, required=False) is not None:
                raise ConflictError(f"An identity named {name!r} already exists.",
                                    hint="Pass --name with another name.")
            identity_id = self._insert_identity(conn, name, "user", "first admin",
                                                [Grant("admin")], actor)
            key_info, key = self._insert_key(conn, identity_id, name, label, None, None,
                                             None, actor)
        self._audit(actor, "identity.create", f"identity/{name}",
                    {"kind": "user", "grants": ["admin"], "init": True})
        self._audit(actor, "key.create", f"key/{key_info.prefix}", {"identity": name})
        return self.get_identity(name), key

    def demo_admin_key(self, name: str = "demo-admin", *, actor: str) -> str | None:
        """A fresh key for the local demo's admin; None when someone else administers.

        A fresh installation gets its first admin (as ``admin init``); later runs revoke the
        demo admin's previous demo keys and issue a new one, so nothing secret is ever read
        back from disk.
        """
        if not self.admin_exists():
            with contextlib.suppress(ConflictError):  # another process initialised first
                return self.init_admin(name, actor=actor, label="demo")[1]
        try:
            ident = self.get_identity(name)
        except NotFoundError:
            return None
        if Grant("admin") not in ident.grants or ident.disabled:
            return None
        for old in self.list_keys(name):
            if old.label == "demo" and old.state == "active":
                self.revoke_key(old.prefix, actor=actor)
        return self.create_key(name, label="demo", actor=actor)[1]

    # -- keys -----------------------------------------------------------------------------

    def create_key(
        self, name: str, *, label: str = "", roles: Sequence[str] | None = None,
        scopes: Sequence[str] | None = None, expires_at: datetime | None = None, actor: str,
    ) -> tuple[KeyInfo, str]:
        """A new key for identity ``name``: (what is stored, the key shown once)."""
        role_list = [check_role(r) for r in roles] if roles else None
        scope_list = [check_scope(s) for s in scopes] if scopes else None
        if expires_at is not None and expires_at.tzinfo is None:
            raise InvalidInputError("expires_at must carry a time zone (UTC).")
        with self._tx(write=True) as conn:
            row = self._identity_row(conn, name)
            info, key = self._insert_key(conn, row.id, name, label, role_list, scope_list,
                                         expires_at, actor)
        self._audit(actor, "key.create", f"key/{info.prefix}",
                    {"identity": name, "label": label, "roles": role_list,
                     "scopes": scope_list,
                     "expires_at": expires_at.isoformat() if expires_at else None})
        return info, key

    def _insert_key(
        self, conn: Connection, identity_id: int, identity: str, label: str,
        roles: list[str] | None, scopes: list[str] | None, expires_at: datetime | None,
        actor: str,
    ) -> tuple[KeyInfo, str]:
        prefix, key = apikeys.new_key()
        now = utcnow()
        conn.execute(api_keys.insert().values(
            identity_id=identity_id, prefix=prefix, key_hash=apikeys.hash_key(key),
            label=label, roles=roles, scopes=scopes, created_by=actor, created_at=now,
            expires_at=expires_at, revoked_at=None,
        ))
        info = KeyInfo(prefix, identity, label, tuple(roles) if roles else None,
                       tuple(scopes) if scopes else None, now, expires_at, None)
        return info, key

    def list_keys(self, name: str | None = None) -> list[KeyInfo]:
        with self._tx(write=False) as conn:
            query = (select(api_keys, identities.c.name.label("identity"))
                     .join(identities, identities.c.id == api_keys.c.identity_id)
                     .order_by(api_keys.c.created_at, api_keys.c.id))
            if name is not None:
                query = query.where(identities.c.name == name)
            return [_key_info(r) for r in conn.execute(query).all()]

    def revoke_key(self, prefix: str, *, actor: str) -> KeyInfo:
        prefix = apikeys.parse_key(prefix) or prefix
        with self._tx(write=True) as conn:
            row = conn.execute(select(api_keys.c.id, api_keys.c.revoked_at)
                               .where(api_keys.c.prefix == prefix)).first()
            if row is None:
                raise NotFoundError(f"No API key has the prefix {prefix!r}.",
                                    hint="List keys with `mlharbor admin keys list`.")
            if row.revoked_at is None:
                conn.execute(update(api_keys).where(api_keys.c.id == row.id)
                             .values(revoked_at=utcnow()))
        self._audit(actor, "key.revoke", f"key/{prefix}", {})
        return next(k for k in self.list_keys() if k.prefix == prefix)

    def authenticate_key(self, key: str) -> Principal:
        """The principal holding ``key``; AuthenticationError when it is not valid now."""
        prefix = apikeys.parse_key(key)
        if prefix is None:
            raise AuthenticationError(
                "The API key is malformed.",
                hint="Send the whole key as 'Authorization: Bearer mlh_...'.",
            )
        with self._tx(write=False) as conn:
            row = self._key_row(conn, api_keys.c.prefix == prefix)
            if row is None or not apikeys.key_matches(key, row.key_hash):
                raise AuthenticationError("The API key is not valid.",
                                          hint="Ask an admin for a new key.")
            return self._key_principal(conn, row)

    def authenticate_key_id(self, key_id: int) -> Principal:
        """The principal of the stored API key ``key_id``, checked exactly as if the key were
        presented now (revoked, expired, identity disabled: AuthenticationError). For dashboard
        sessions, which stand for the key they were opened with but never hold it."""
        with self._tx(write=False) as conn:
            row = self._key_row(conn, api_keys.c.id == key_id)
            if row is None:
                raise AuthenticationError("The API key no longer exists.",
                                          hint="Ask an admin for a new key.")
            return self._key_principal(conn, row)

    def _key_row(self, conn: Connection, where: Any) -> Any:
        return conn.execute(
            select(api_keys, identities.c.name.label("identity"), identities.c.kind,
                   identities.c.disabled)
            .join(identities, identities.c.id == api_keys.c.identity_id)
            .where(where)).first()

    def _key_principal(self, conn: Connection, row: Any) -> Principal:
        """The principal of a key row whose secret was already matched (or need not be)."""
        if row.revoked_at is not None:
            raise AuthenticationError(f"The API key {row.prefix} was revoked.",
                                      hint="Ask an admin for a new key.")
        if row.expires_at is not None and _aware(row.expires_at) <= utcnow():
            raise AuthenticationError(f"The API key {row.prefix} has expired.",
                                      hint="Ask an admin for a new key.")
        if row.disabled:
            raise AuthenticationError(f"The identity {row.identity!r} is disabled.")
        bindings = [Grant(r.role, r.scope) for r in conn.execute(
            select(role_bindings.c.role, role_bindings.c.scope)
            .where(role_bindings.c.identity_id == row.identity_id))]
        grants = narrow(bindings, row.roles, row.scopes)
        return Principal(name=row.identity, kind=row.kind, grants=grants, credential=row.prefix)

    # -- rows -----------------------------------------------------------------------------

    def _identity_row(self, conn: Connection, name: str, *, required: bool = True) -> Any:
        row = conn.execute(select(identities).where(identities.c.name == name)).first()
        if row is None and required:
            raise NotFoundError(f"No user or service account is named {name!r}.",
                                hint="List them with `mlharbor admin users list`.")
        return row

    def _identity(self, conn: Connection, row: Any) -> Identity:
        grants = tuple(Grant(r.role, r.scope) for r in conn.execute(
            select(role_bindings.c.role, role_bindings.c.scope)
            .where(role_bindings.c.identity_id == row.id).order_by(role_bindings.c.id)))
        return Identity(row.name, row.kind, row.description, bool(row.disabled), grants,
                        _aware(row.created_at), row.created_by)


def narrow(bindings: Sequence[Grant], roles: Sequence[str] | None,
           scopes: Sequence[str] | None) -> tuple[Grant, ...]:
    """The identity's grants as far as a key restricted to ``roles``/``scopes`` allows."""
    kept = [g for g in bindings if roles is None or g.role in roles]
    if not scopes:
        return tuple(kept)
    narrowed: list[Grant] = []
    for g in kept:
        if g.scope == GLOBAL:
            narrowed.extend(Grant(g.role, s) for s in scopes)
        elif g.scope in scopes:
            narrowed.append(g)
    return tuple(dict.fromkeys(narrowed))


def check_identity_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidInputError(
            f"Identity name {name!r} is not allowed: use 1-128 letters, digits and . _ @ + -, "
            "starting with a letter or digit.", field="name")
    return name


def _key_info(row: Any) -> KeyInfo:
    return KeyInfo(
        prefix=row.prefix, identity=row.identity, label=row.label,
        roles=tuple(row.roles) if row.roles else None,
        scopes=tuple(row.scopes) if row.scopes else None,
        created_at=_aware(row.created_at),
        expires_at=_aware(row.expires_at) if row.expires_at else None,
        revoked_at=_aware(row.revoked_at) if row.revoked_at else None,
    )


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
