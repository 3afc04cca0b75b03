"""``mlharbor config``: show the effective settings."""

from __future__ import annotations

import typer

from mlharbor.cli.output import print_json


def register(app: typer.Typer) -> None:
    config_app = typer.Typer(help="Inspect settings.", no_args_is_help=True)

    @config_app.command("show")
    def show(ctx: typer.Context) -> None:
        """Print the effective settings (env vars, config file, defaults) with secrets masked."""
        from mlharbor.cli.main import settings_from

        print_json(settings_from(ctx).masked())

    app.add_typer(config_app, name="config")
