"""``mlharbor serve [REF]``: serve every stored endpoint, or one model without setup.

What a serving process serves is built by the composition root
(:class:`mlharbor.bootstrap.serving.ServingProcess`); this module parses the options and runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from mlharbor.settings import Settings


def serve_with_monitoring(
    settings: Settings, *, ref: str | None = None, host: str | None = None,
    port: int | None = None, json_logs: bool = True, workers: int | None = None,
    tls_cert: Path | None = None, tls_key: Path | None = None, explain: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT: in this process, or in ``workers`` processes sharing the
    port (default ``server.workers``); over HTTPS with ``tls_cert`` and ``tls_key`` (default
    ``server.tls_certfile`` / ``server.tls_keyfile``). Bad options fail before anything
    starts."""
    from mlharbor.bootstrap.serving import ServingProcess
    from mlharbor.serving.runner import listener_from, run_server, run_workers

    listener = listener_from(settings, host=host, port=port, workers=workers,
                             certfile=tls_cert, keyfile=tls_key)
    if explain and ref is None:
        from mlharbor.core.errors import InvalidInputError

        raise InvalidInputError(
            "--explain applies to the endpoint of a model served with `mlharbor serve REF`.",
            hint="Stored endpoints turn explanations on in their spec: "
            "`mlharbor endpoints update NAME --explain`.", field="--explain")
    build = ServingProcess(settings, ref, json_logs, explain)
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
        explain: bool = typer.Option(
            False, "--explain", help="Also serve feature attributions for REF "
            "(POST /v1/endpoints/NAME/explain, /v1/models/NAME:explain)."),
    ) -> None:
        """Serve models over the native, Open Inference v2, MLflow and KServe v1 protocols.

        SIGTERM drains: requests in flight finish (up to serving.drain_timeout_s), the
        prediction log is flushed, then every worker exits.
        """
        from mlharbor.cli.main import settings_from

        serve_with_monitoring(settings_from(ctx), ref=ref, host=host, port=port,
                              json_logs=json_logs, workers=workers, tls_cert=tls_cert,
                              tls_key=tls_key, explain=explain)
