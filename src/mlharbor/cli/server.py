"""``mlharbor server``: the control-plane HTTP API (registry, docs, health), and in the
background the job runner and the trigger loop (``pipelines.run_jobs``; see ``mlharbor worker``
to run them elsewhere)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("server")
    def server(
        ctx: typer.Context,
        host: str = typer.Option(None, help="Interface to bind (default from settings)."),
        port: int = typer.Option(None, help="Port (default from settings; 0 = any free)."),
        certfile: Path = typer.Option(
            None, "--tls-cert", help="PEM certificate (chain) to serve HTTPS; needs --tls-key "
            "(default from settings).", show_default=False),
        keyfile: Path = typer.Option(
            None, "--tls-key", help="PEM private key of --tls-cert, unencrypted; keep it "
            "mode 0600 (default from settings).", show_default=False),
    ) -> None:
        """Run the control-plane API (OpenAPI docs at /docs, health at /livez and /readyz).

        Unless pipelines.run_jobs is off, it also runs retraining jobs and evaluates the
        policies' triggers in the background. SIGTERM stops cleanly: a job's step is finished
        or abandoned, and any runner sharing the database resumes the job.
        """
        import uvicorn

        from mlharbor.api.app import create_app
        from mlharbor.bootstrap import build_control_plane
        from mlharbor.cli.main import settings_from
        from mlharbor.serving.runner import listener_from

        settings = settings_from(ctx)
        # The same checks as `mlharbor serve`: half a TLS pair or an unreadable file is one
        # clear error before anything starts.
        listener = listener_from(settings, host=host, port=port, workers=1,
                                 certfile=certfile, keyfile=keyfile)
        services = build_control_plane(settings)
        try:
            app_ = create_app(settings, services=services)
            uvicorn.run(
                app_,
                host=listener.host,
                port=listener.port,
                ssl_certfile=listener.certfile,
                ssl_keyfile=listener.keyfile,
                log_level="info",
                access_log=False,
                server_header=False,
            )
        finally:
            services.close()
