"""``mlharbor models``: register, list, show, versions, alias, archive, delete."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mlharbor.cli.output import print_json, print_kv, print_table

if TYPE_CHECKING:
    from mlharbor.registry.service import Registry

JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts.")


def _registry(ctx: typer.Context) -> Registry:
    from mlharbor.bootstrap import open_registry
    from mlharbor.cli.main import settings_from

    return open_registry(settings_from(ctx))


def _parse_tags(items: list[str] | None) -> dict[str, str]:
    from mlharbor.core.errors import InvalidInputError

    tags: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInputError(f"--tag {item!r} is not KEY=VALUE.")
        tags[key] = value
    return tags


def _version_rows(version: Any) -> list[tuple[str, Any]]:
    return [
        ("reference", version.ref),
        ("status", version.status.value + (f" ({version.status_reason})"
                                           if version.status_reason else "")),
        ("archived", version.archived),
        ("aliases", ", ".join(f"@{a}" for a in version.aliases)),
        ("created", f"{version.created_at:%Y-%m-%d %H:%M:%S} by {version.created_by}"),
        ("description", version.description),
        ("format", (version.manifest or {}).get("model_format", "raw files")),
        ("runtime", (version.manifest or {}).get("default_runtime")),
        ("files", ", ".join(f"{f.path} ({f.size} B)" for f in version.files)),
        ("metrics", ", ".join(f"{k}={v:.4g}" for k, v in version.metrics.items())),
        ("params", ", ".join(f"{k}={v}" for k, v in version.params.items())),
        ("tags", ", ".join(f"{k}={v}" for k, v in version.tags.items())),
        ("reference", _reference_row(version.lineage.get("reference_profile"))),
    ]


def _reference_row(profile: Any) -> str:
    """What drift monitoring compares this version with, in a few words."""
    if not isinstance(profile, dict) or "features" not in profile:
        return "none (set one: mlharbor monitor reference set NAME:N --data FILE)"
    return f"profile of {profile.get('rows', '?')} rows, {len(profile['features'])} column(s)"


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(help="Manage registered models, versions and aliases.",
                             no_args_is_help=True)
    alias_app = typer.Typer(help="Move aliases (champion, challenger ...) between versions.",
                            no_args_is_help=True)
    models_app.add_typer(alias_app, name="alias")

    @models_app.command("register")
    def register_cmd(
        ctx: typer.Context,
        name: str = typer.Argument(..., help="Model name."),
        path: Path = typer.Argument(..., help="Model file, model folder or bundle folder."),
        description: str = typer.Option("", help="What this version is."),
        tag: list[str] = typer.Option(None, "--tag", help="KEY=VALUE, repeatable."),
        sample: Path = typer.Option(None, "--sample", help="CSV of a few input rows: the "
                                    "signature and input example come from it."),
        training_data: Path = typer.Option(None, "--training-data", help="CSV/Parquet of "
                                           "training rows: stored as the reference profile "
                                           "drift monitoring compares live inputs with; "
                                           "categories and the ONNX parity check use it too."),
        trust_pickle: str = typer.Option(None, "--trust-pickle", metavar="SHA256",
                                         help="Load a pickle/joblib file whose sha256 is this."),
        trust_code: bool = typer.Option(False, "--trust-code",
                                        help="Allow a Python-source model (its code runs)."),
        runtime: str = typer.Option("auto", "--runtime", help="auto | onnx | native."),
        raw: bool = typer.Option(False, "--raw", help="Store the files as they are: no format "
                                 "detection, checks or manifest (cannot be served)."),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """Register PATH as a new version of NAME: detect its format, check it is safe to
        load, convert to ONNX when the parity check passes, and say which runtime serves it."""
        from mlharbor.core.records import to_dict

        registry = _registry(ctx)
        if raw:
            version = registry.register_version(
                name, path, description=description, tags=_parse_tags(tag),
            )
            if as_json:
                print_json(to_dict(version))
                return
            typer.echo(f"Registered {version.ref} ({len(version.files)} file(s)).")
            return
        from mlharbor.cli.main import settings_from
        from mlharbor.registry.bundles import register_model

        settings = settings_from(ctx)

        def read_table(file: Path | None) -> Any:
            if file is None:
                return None
            from mlharbor.data.loading import load_table

            return load_table(file, s3_endpoint_url=settings.s3_endpoint_url,
                              s3_region=settings.s3_region).frame

        result = register_model(
            registry, name, path, settings=settings, sample_input=read_table(sample),
            training_data=read_table(training_data), trust_pickle_sha256=trust_pickle,
            trust_code=trust_code, runtime=runtime, description=description,
            tags=_parse_tags(tag),
        )
        if as_json:
            print_json({"format": result.format, "runtime": result.runtime,
                        "parity": result.parity, "reference": result.reference,
                        "version": to_dict(result.version)})
            return
        parity = result.parity
        typer.echo(f"Registered {result.version.ref} ({len(result.version.files)} file(s)).")
        typer.echo(f"  format:  {result.format}")
        typer.echo(f"  runtime: {result.runtime}")
        typer.echo(f"  parity:  {parity.get('status', 'n/a')} - {parity.get('reason', '')}")
        typer.echo(f"  reference: {result.reference}" if result.reference else
                   "  reference: none (drift monitoring needs one: pass --training-data, or "
                   f"later `mlharbor monitor reference set {result.version.ref} --data FILE`)")

    @models_app.command("list")
    def list_cmd(
        ctx: typer.Context,
        name_contains: str = typer.Option(None, "--search", help="Part of the name."),
        tag: list[str] = typer.Option(None, "--tag", help="KEY=VALUE filter, repeatable."),
        page_size: int = typer.Option(100, "--page-size"),
        page_token: str = typer.Option(None, "--page-token"),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """List registered models."""
        from mlharbor.core.records import to_dict

        page = _registry(ctx).list_models(name_contains=name_contains, tags=_parse_tags(tag),
                                          page_size=page_size, page_token=page_token)
        if as_json:
            print_json(to_dict(page))
            return
        print_table(
            f"Models ({page.total})", ["name", "latest", "aliases", "updated", "description"],
            [(m.name, m.latest_version,
              ", ".join(f"@{a}={v}" for a, v in sorted(m.aliases.items())),
              f"{m.updated_at:%Y-%m-%d %H:%M}", m.description) for m in page.items],
        )
        if page.next_page_token:
            typer.echo(f"More: --page-token {page.next_page_token}")

    @models_app.command("show")
    def show_cmd(
        ctx: typer.Context,
        ref: str = typer.Argument(..., help="name, name:3, name:latest or name@alias"),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """Show one version (a bare name shows the model and its latest version)."""
        from mlharbor.core.records import to_dict

        registry = _registry(ctx)
        version = registry.get_version(ref)
        if as_json:
            print_json(to_dict(version))
            return
        print_kv(version.ref, _version_rows(version))

    @models_app.command("versions")
    def versions_cmd(
        ctx: typer.Context,
        name: str = typer.Argument(...),
        status: str = typer.Option(None, help="registering, ready or failed."),
        hide_archived: bool = typer.Option(False, "--hide-archived"),
        page_size: int = typer.Option(100, "--page-size"),
        page_token: str = typer.Option(None, "--page-token"),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """List the versions of a model, newest first."""
        from mlharbor.core.records import to_dict

        page = _registry(ctx).list_versions(name, status=status,
                                            include_archived=not hide_archived,
                                            page_size=page_size, page_token=page_token)
        if as_json:
            print_json(to_dict(page))
            return
        print_table(
            f"{name}: {page.total} version(s)",
            ["version", "status", "aliases", "archived", "created", "by", "metrics"],
            [(v.version, v.status.value, ", ".join(f"@{a}" for a in v.aliases),
              "yes" if v.archived else "", f"{v.created_at:%Y-%m-%d %H:%M}", v.created_by,
              ", ".join(f"{k}={val:.3g}" for k, val in list(v.metrics.items())[:4]))
             for v in page.items],
        )
        if page.next_page_token:
            typer.echo(f"More: --page-token {page.next_page_token}")

    @models_app.command("archive")
    def archive_cmd(ctx: typer.Context, ref: str = typer.Argument(..., help="name:N")) -> None:
        """Archive a version (refused while an alias points to it)."""
        version = _registry(ctx).archive_version(ref)
        typer.echo(f"Archived {version.ref}.")

    @models_app.command("unarchive")
    def unarchive_cmd(ctx: typer.Context, ref: str = typer.Argument(..., help="name:N")) -> None:
        """Bring an archived version back."""
        version = _registry(ctx).unarchive_version(ref)
        typer.echo(f"Unarchived {version.ref}.")

    @models_app.command("delete")
    def delete_cmd(
        ctx: typer.Context,
        target: str = typer.Argument(..., help="name:N deletes a version; name the model."),
        yes: bool = typer.Option(False, "--yes", help="Do not ask."),
    ) -> None:
        """Delete a version or a whole model (refused while aliases point at it)."""
        from mlharbor.core.refs import ModelRef

        ref = ModelRef.parse(target)
        registry = _registry(ctx)
        if ":" in target or "@" in target:
            if ref.kind != "version":
                from mlharbor.core.errors import InvalidInputError

                raise InvalidInputError("Delete takes name:N (a version number), or a name.")
            if not yes:
                typer.confirm(f"Delete {ref}?", abort=True)
            registry.delete_version(ref)
            typer.echo(f"Deleted {ref}.")
            return
        if not yes:
            typer.confirm(f"Delete model {ref.name} and all its versions?", abort=True)
        registry.delete_model(ref.name)
        typer.echo(f"Deleted model {ref.name}.")

    @models_app.command("sweep")
    def sweep_cmd(
        ctx: typer.Context,
        older_than: int = typer.Option(60, "--older-than-minutes", min=1,
                                       help="Only registrations started this long ago."),
    ) -> None:
        """Mark registrations abandoned by a killed process as failed."""
        from datetime import timedelta

        swept = _registry(ctx).sweep_stale_registrations(timedelta(minutes=older_than))
        typer.echo(f"Marked {len(swept)} abandoned registration(s) as failed"
                   + (f": {', '.join(swept)}." if swept else "."))

    @alias_app.command("set")
    def alias_set(
        ctx: typer.Context, name: str = typer.Argument(...), alias: str = typer.Argument(...),
        version: int = typer.Argument(..., min=1),
        reason: str = typer.Option("", help="Why; kept in the deployment ledger."),
    ) -> None:
        """Point ALIAS of NAME at VERSION."""
        move = _registry(ctx).set_alias(name, alias, version, reason=reason)
        was = f" (was {move.from_version})" if move.from_version else ""
        typer.echo(f"{name}@{alias} -> {version}{was}")

    @alias_app.command("unset")
    def alias_unset(
        ctx: typer.Context, name: str = typer.Argument(...), alias: str = typer.Argument(...),
        reason: str = typer.Option("", help="Why; kept in the deployment ledger."),
    ) -> None:
        """Remove ALIAS from NAME."""
        move = _registry(ctx).delete_alias(name, alias, reason=reason)
        typer.echo(f"Removed {name}@{alias} (was {move.from_version}).")

    @alias_app.command("history")
    def alias_history(
        ctx: typer.Context, name: str = typer.Argument(...),
        alias: str = typer.Argument(None, help="Only this alias."),
        as_json: bool = JSON_OPTION,
    ) -> None:
        """Every move of the model's aliases: who, when, from, to, why."""
        from mlharbor.core.records import to_dict

        moves = _registry(ctx).alias_history(name, alias)
        if as_json:
            print_json(to_dict(moves))
            return
        print_table(f"{name}: alias history", ["when", "alias", "from", "to", "who", "reason"],
                    [(f"{m.at:%Y-%m-%d %H:%M:%S}", m.alias, m.from_version, m.to_version,
                      m.actor, m.reason) for m in moves])

    app.add_typer(models_app, name="models")

