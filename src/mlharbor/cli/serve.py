"""``mlharbor serve [REF]``: serve every stored endpoint, or one model without setup."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from mlharbor.settings import Settings


@dataclasses.dataclass(frozen=True)
class ServingProcess:
    """Builds what one serving process serves, with every layer wired: the registry, API
    keys, and monitoring's prediction log as the sink (serving never imports monitoring; this
    entry point hands the log to it).

    Picklable on purpose: with ``--workers N`` each worker process receives a copy and calls
    it, so each opens its own registry connection and claims its own prediction-log journal.
    Returns the app and what closes what was opened (the log first: it flushes to the store).
    """

    settings: Settings
    ref: str | None = None
    json_logs: bool = True

    def __call__(self) -> tuple[Any, Callable[[], None]]:
        from mlharbor.bootstrap import open_identities, open_registry
        from mlharbor.monitoring.service import open_prediction_log
        from mlharbor.serving.app import create_serving_app
        from mlharbor.telemetry.metrics import ServingMetrics

        if self.json_logs:
            from mlharbor.telemetry.logging import configure_json_logging

            configure_json_logging()
        registry = open_registry(self.settings)
        log = None
        try:
            if self.ref is not None:
                registry.get_version(self.ref)  # fail fast, with the registry's message
            metrics = ServingMetrics()
            feedback = None
            if self.settings.monitoring.log_predictions:
                from mlharbor.monitoring.feedback import open_feedback

                log = open_prediction_log(self.settings,
                                          metrics_registry=metrics.registry).start()
                feedback = open_feedback(self.settings, log, registry).add
            app = create_serving_app(self.settings, registry, ref=self.ref, sink=log,
                                     identities=open_identities(registry), metrics=metrics,
                                     feedback=feedback)
        except BaseException:
            if log is not None:
                log.close()
            registry.close()
            raise
        opened = log
        # Resource use for the dashboard (mlharbor.monitoring.traffic.ResourceReporter).
        from mlharbor.monitoring.traffic import ResourceReporter

        reporter = ResourceReporter(self.settings.home, metrics.resource_sample).start()

        def close() -> None:
            try:
                reporter.stop()
                if opened is not None:
                    opened.close()
            finally:
                registry.close()

        return app, close


def serve_with_monitoring(
    settings: Settings, *, ref: str | None = None, host: str | None = None,
    port: int | None = None, json_logs: bool = True, workers: int | None = None,
    tls_cert: Path | None = None, tls_key: Path | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT: in this process, or in ``workers`` processes sharing the
    port (default ``server.workers``); over HTTPS with ``tls_cert`` and ``tls_key`` (default
    ``server.tls_certfile`` / ``server.tls_keyfile``). Bad options fail before anything
    starts."""
    from mlharbor.serving.runner import listener_from, run_server, run_workers

    listener = listener_from(settings, host=host, port=port, workers=workers,
                             certfile=tls_cert, keyfile=tls_key)
    build = ServingProcess(settings, ref, json_logs)
    if listener.workers == 1:
        run_server(settings, build, listener)
        return
    if json_logs:
        from mlharbor.telemetry.logging import configure_json_logging

        configure_json_logging()
    if ref is not None:
        _check_reference(settings, ref)
    run_workers(settings, build, listener)


def _check_reference(settings: Settings, ref: str) -> None:
    """A bad reference is one error here, not a failure in every worker."""
    from mlharbor.bootstrap import open_registry

    registry = open_registry(settings)
    try:
        registry.get_version(ref)
    finally:
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
        workers: int = typer.Option(
            None, "--workers", "-w", help="Processes sharing the port, each with its own "
            "models in memory; about one per core (default from settings: 1)."),
        tls_cert: Path = typer.Option(
            None, "--tls-cert", help="PEM certificate (chain) to serve HTTPS; needs --tls-key "
            "(default from settings).", show_default=False),
        tls_key: Path = typer.Option(
            None, "--tls-key", help="PEM private key of --tls-cert, unencrypted; keep it "
            "mode 0600 (default from settings).", show_default=False),
        json_logs: bool = typer.Option(True, "--json-logs/--plain-logs",
                                       help="Structured JSON log lines (default)."),
    ) -> None:
        """Serve models over the native, Open Inference v2, MLflow and KServe v1 protocols.

        SIGTERM drains: requests in flight finish (up to serving.drain_timeout_s), the
        prediction log is flushed, then every worker exits.
        """
        from mlharbor.cli.main import settings_from

        serve_with_monitoring(settings_from(ctx), ref=ref, host=host, port=port,
                              json_logs=json_logs, workers=workers, tls_cert=tls_cert,
                              tls_key=tls_key)
