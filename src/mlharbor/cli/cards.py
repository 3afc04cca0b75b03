"""``mlharbor models card MODEL:V``: the version's model card, from stored records only."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``card`` to the ``models`` group (registered before this module by cli.models)."""
    group = next((g.typer_instance for g in app.registered_groups if g.name == "models"), None)
    if group is None:  # cli.models is listed first in COMMAND_MODULES
        raise RuntimeError("mlharbor.cli.cards needs the `models` command group")

    @group.command("card")
    def card(
        ctx: typer.Context,
        ref: str = typer.Argument(..., help="The version: churn:3, churn@champion ..."),
        fmt: str = typer.Option("md", "--format", help="md (Markdown), html or json."),
        output: Path = typer.Option(None, "--output", "-o", help="File to write (default: "
                                    "stdout)."),
        overrides: list[str] = typer.Option(
            None, "--set", help="KEY=VALUE for what no record knows: intended_use, "
            "out_of_scope, limitations, ethical_considerations, owners (overrides the "
            "recipe's card: section)."),
    ) -> None:
        """Write the version's model card: intended use and limitations, training data and
        its fingerprint, evaluation with baselines, slices and explanations, lineage, and who
        registered, approved and promoted it (from the audit trail)."""
        import json

        from mlharbor.bootstrap import open_registry
        from mlharbor.cli.main import settings_from
        from mlharbor.cli.output import check_output
        from mlharbor.core.errors import InvalidInputError
        from mlharbor.pipelines.cardrender import (
            FORMATS,
            card_json,
            render_card_html,
            render_markdown,
        )
        from mlharbor.pipelines.modelcard import build_card, parse_overrides

        if fmt not in FORMATS:
            raise InvalidInputError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}.",
                                    field="format")
        values = parse_overrides(overrides or [])
        check_output(output, what="the model card")  # before any work
        registry = open_registry(settings_from(ctx))
        try:
            built = build_card(registry, ref, values)
        finally:
            registry.close()
        text = (render_markdown(built) if fmt == "md" else render_card_html(built)
                if fmt == "html" else json.dumps(card_json(built), indent=1) + "\n")
        if output is None:
            typer.echo(text, nl=False)
            return
        from mlharbor.cli.output import write_output

        write_output(output, text, what="the model card")
        typer.echo(f"Wrote the model card of {built.ref} to {output}")
