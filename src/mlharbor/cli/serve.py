"""``mlharbor serve [REF]``: serve every stored endpoint, or one model without setup."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        ctx: typer.Context,
        ref: str = typer.Argument(
            None, help="Serve only this model (churn, churn:3, churn@champion) as endpoint "
            "'churn'; omit to serve every endpoint in the registry."),
        host: str = typer.Option(None, help="Interface to bind (default from settings)."),
        port: int = typer.Option(None, help="Port (default from settings; 0 = any free)."),
        json_logs: bool = typer.Option(True, "--json-logs/--plain-logs",
                                       help="Structured JSON log lines (default)."),
    ) -> None:
        """Serve models over the native, Open Inference v2, MLflow and KServe v1 protocols."""
        from mlharbor.cli.main import settings_from
        from mlharbor.serving.runner import run_server

        settings = settings_from(ctx)
        run_server(settings, ref=ref, host=host, port=port, json_logs=json_logs)
