"""``mlharbor admin``: the first admin, users, service accounts, API keys, roles, DB roles.

Acts directly on the metadata database (whoever can read the database's settings is already
trusted with it); every change is audited with the actor ``cli:<os user>``. Keys are printed
once, when created, and never again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from mlharbor.cli.output import print_json, print_table

if TYPE_CHECKING:
    from mlharbor.security.identities import IdentityStore

JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts.")
ROLE_OPTION = typer.Option(None, "--role", help="ROLE or ROLE@model:NAME / ROLE@endpoint:NAME; "
                           "repeatable.")


def cli_actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _identities(ctx: typer.Context) -> IdentityStore:
    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.cli.main import settings_from

    return open_identities(open_registry(settings_from(ctx)))


def _show_key(identity: str, key: str, prefix: str) -> None:
    typer.echo(f"API key for {identity!r} (prefix {prefix}). It is shown only now; store it "
               "in a secret manager:")
    typer.echo(key)


def _identity_rows(items: list[Any]) -> list[tuple[Any, ...]]:
    return [(i.name, i.kind, ", ".join(str(g) for g in i.grants),
             "disabled" if i.disabled else "active", f"{i.created_at:%Y-%m-%d %H:%M}")
            for i in items]


def _identity_dict(i: Any) -> dict[str, Any]:
    return {"name": i.name, "kind": i.kind, "grants": [str(g) for g in i.grants],
            "disabled": i.disabled, "created_at": i.created_at.isoformat(),
            "created_by": i.created_by}


def _identity_commands(kind: str, label: str) -> typer.Typer:
    sub = typer.Typer(help=f"Manage {label}.", no_args_is_help=True)

    @sub.command("create")
    def create(ctx: typer.Context, name: str = typer.Argument(...),
               role: list[str] = ROLE_OPTION,
               description: str = typer.Option("", help="Who or what this is."),
               with_key: bool = typer.Option(False, "--with-key",
                                             help="Also create and print an API key.")) -> None:
        """Create an identity with the given grants."""
        store = _identities(ctx)
        ident = store.create_identity(name, kind=kind, grants=role or [],
                                      description=description, actor=cli_actor())
        typer.echo(f"Created {kind} {ident.name!r} with "
                   f"{', '.join(str(g) for g in ident.grants) or 'no roles'}.")
        if with_key:
            info, key = store.create_key(name, label="created with identity", actor=cli_actor())
            _show_key(name, key, info.prefix)

    @sub.command("list")
    def list_(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
        """List them with their grants."""
        items = _identities(ctx).list_identities(kind)
        if as_json:
            print_json([_identity_dict(i) for i in items])
            return
        print_table(label.capitalize(), ["name", "kind", "grants", "state", "created"],
                    _identity_rows(items))

    @sub.command("disable")
    def disable(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
        """Disable: its keys stop working at once (they are kept for the record)."""
        _identities(ctx).set_disabled(name, True, actor=cli_actor())
        typer.echo(f"Disabled {name!r}.")

    @sub.command("enable")
    def enable(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
        """Enable a disabled identity again."""
        _identities(ctx).set_disabled(name, False, actor=cli_actor())
        typer.echo(f"Enabled {name!r}.")

    return sub


def register(app: typer.Typer) -> None:
    admin = typer.Typer(help="Administer users, service accounts, API keys and roles.",
                        no_args_is_help=True)
    keys = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
    roles = typer.Typer(help="Grant and revoke roles.", no_args_is_help=True)
    admin.add_typer(_identity_commands("user", "users"), name="users")
    admin.add_typer(_identity_commands("service", "service accounts"), name="service-accounts")
    admin.add_typer(keys, name="keys")
    admin.add_typer(roles, name="roles")

    @admin.command("init")
    def init(ctx: typer.Context,
             name: str = typer.Option("admin", help="Name of the first admin.")) -> None:
        """Create the first admin and print its API key once (refused if an admin exists)."""
        ident, key = _identities(ctx).init_admin(name, actor=cli_actor())
        from mlharbor.security import apikeys

        _show_key(ident.name, key, apikeys.parse_key(key) or "?")

    @admin.command("policy")
    def policy(as_json: bool = JSON_OPTION) -> None:
        """Show the policy table: which role may do which action."""
        from mlharbor.security.policy import ACTIONS, matrix

        table = matrix()
        if as_json:
            print_json(table)
            return
        print_table("Policy (global scope; ROLE@model:NAME limits a grant to one model)",
                    ["role", *ACTIONS],
                    [(role, *("yes" if ok else "" for ok in row.values()))
                     for role, row in table.items()])

    @keys.command("create")
    def key_create(
        ctx: typer.Context, identity: str = typer.Argument(..., help="User or service account."),
        label: str = typer.Option("", help="What the key is for."),
        role: list[str] = typer.Option(None, "--role", help="Only these of its roles."),
        scope: list[str] = typer.Option(None, "--scope", help="Only these scopes "
                                        "(model:NAME, endpoint:NAME)."),
        expires_in: str = typer.Option(None, help="Lifetime such as 90d or 12h."),
    ) -> None:
        """Create an API key and print it once."""
        from mlharbor.core.clock import utcnow
        from mlharbor.core.durations import parse_duration

        expires = utcnow() + parse_duration(expires_in) if expires_in else None
        info, key = _identities(ctx).create_key(identity, label=label, roles=role or None,
                                                scopes=scope or None, expires_at=expires,
                                                actor=cli_actor())
        _show_key(identity, key, info.prefix)

    @keys.command("list")
    def key_list(ctx: typer.Context,
                 identity: str = typer.Argument(None, help="Only this identity's keys."),
                 as_json: bool = JSON_OPTION) -> None:
        """List keys by prefix (the keys themselves are never stored)."""
        items = _identities(ctx).list_keys(identity)
        rows = [{"prefix": k.prefix, "identity": k.identity, "label": k.label,
                 "state": k.state, "roles": list(k.roles or []), "scopes": list(k.scopes or []),
                 "created_at": k.created_at.isoformat(),
                 "expires_at": k.expires_at.isoformat() if k.expires_at else None}
                for k in items]
        if as_json:
            print_json(rows)
            return
        print_table("API keys", ["prefix", "identity", "label", "state", "expires"],
                    [(r["prefix"], r["identity"], r["label"], r["state"], r["expires_at"])
                     for r in rows])

    @keys.command("revoke")
    def key_revoke(ctx: typer.Context,
                   prefix: str = typer.Argument(..., help="The key's prefix.")) -> None:
        """Revoke a key: refused from the next request on."""
        info = _identities(ctx).revoke_key(prefix, actor=cli_actor())
        typer.echo(f"Revoked key {info.prefix} of {info.identity!r}.")

    @roles.command("grant")
    def grant(ctx: typer.Context, identity: str = typer.Argument(...),
              grant_: str = typer.Argument(..., metavar="ROLE[@SCOPE]")) -> None:
        """Grant a role, globally or on one model / endpoint."""
        ident = _identities(ctx).grant(identity, grant_, actor=cli_actor())
        typer.echo(f"{ident.name!r} now has: {', '.join(str(g) for g in ident.grants)}.")

    @roles.command("revoke")
    def revoke(ctx: typer.Context, identity: str = typer.Argument(...),
               grant_: str = typer.Argument(..., metavar="ROLE[@SCOPE]")) -> None:
        """Take a grant away."""
        ident = _identities(ctx).revoke_grant(identity, grant_, actor=cli_actor())
        typer.echo(f"{ident.name!r} now has: "
                   f"{', '.join(str(g) for g in ident.grants) or 'no roles'}.")

    @admin.command("db-roles")
    def db_roles(
        ctx: typer.Context,
        app_role: str = typer.Option("mlharbor_app", help="Role the servers connect as."),
        password_env: str = typer.Option(None, help="Environment variable holding its "
                                         "password (else none: trust/peer/cert auth)."),
    ) -> None:
        """PostgreSQL: create/refresh the application role; it cannot alter the audit trail."""
        import os

        from mlharbor.bootstrap import open_registry
        from mlharbor.cli.main import settings_from
        from mlharbor.core.errors import ConfigError
        from mlharbor.security.dbroles import grant_app_role

        password = None
        if password_env:
            password = os.environ.get(password_env)
            if not password:
                raise ConfigError(f"The environment variable {password_env} is empty or unset.")
        registry = open_registry(settings_from(ctx))
        grant_app_role(registry.store.db.engine, app_role, password=password)
        typer.echo(f"Role {app_role!r} may read and write the registry and append to "
                   "audit_events, but not update, delete or truncate it. Run this again after "
                   "each upgrade.")

    app.add_typer(admin, name="admin")
