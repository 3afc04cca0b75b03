"""``mlharbor demo``: the main job behind ``make run``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        ctx: typer.Context,
        traffic: bool = typer.Option(
            True, "--traffic/--no-traffic",
            help="Send the served model demo requests (drifting over a few minutes) and "
            "their delayed ground truth, so the dashboard has something to show."),
    ) -> None:
        """Train the demo model on the bundled churn data, register it and show where to look."""
        from mlharbor.cli.main import settings_from
        from mlharbor.demo.job import run_demo

        run_demo(settings_from(ctx), traffic=traffic)
