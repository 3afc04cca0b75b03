"""``mlharbor serve [REF]``: serve every stored endpoint, or one model without setup."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from mlharbor.settings import Settings


def serve_with_monitoring(
    settings: Settings, *, ref: str | None = None, host: str | None = None,
    port: int | None = None, json_logs: bool = True,
) -> None:
    """Serve with every layer wired: registry, keys, and the prediction log as the sink.

    Serving never imports monitoring; this entry point hands monitoring's log to it.
    """
    from mlharbor.bootstrap import open_identities, open_registry
    from mlharbor.monitoring.service import open_prediction_log
    from mlharbor.serving.runner import run_server
    from mlharbor.telemetry.metrics import ServingMetrics

    if json_logs:
        from mlharbor.telemetry.logging import configure_json_logging

        configure_json_logging()
    registry = open_registry(settings)
    metrics = ServingMetrics()
    log = open_prediction_log(settings, metrics_registry=metrics.registry).start()
    try:
        run_server(settings, registry, identities=open_identities(registry), ref=ref,
                   host=host, port=port, sink=log, metrics=metrics)
    finally:
        log.close()
        registry.close()


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

        serve_with_monitoring(settings_from(ctx), ref=ref, host=host, port=port,
                              json_logs=json_logs)
