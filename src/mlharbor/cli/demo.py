"""``mlharbor demo``: the main job behind ``make run``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        ctx: typer.Context,
        traffic: bool = typer.Option(
            True, "--traffic/--no-traffic",
            help="Send the served model demo requests (drifting over 90 s) and their delayed "
            "ground truth, which starts the retraining loop; --no-traffic only serves."),
    ) -> None:
        """Train the demo model, register and serve it, then show the closed loop: drifting
        traffic triggers one retraining job that validates, canaries and promotes."""
        from mlharbor.cli.main import settings_from
        from mlharbor.demo.job import run_demo

        run_demo(settings_from(ctx), traffic=traffic)
