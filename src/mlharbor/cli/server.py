"""``mlharbor server``: the control-plane HTTP API (registry, docs, health)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("server")
    def server(
        ctx: typer.Context,
        host: str = typer.Option(None, help="Interface to bind (default from settings)."),
        port: int = typer.Option(None, help="Port (default from settings; 0 = any free)."),
        certfile: str = typer.Option(None, "--tls-cert", help="PEM certificate for HTTPS."),
        keyfile: str = typer.Option(None, "--tls-key", help="PEM private key for HTTPS."),
    ) -> None:
        """Run the control-plane API (OpenAPI docs at /docs, health at /livez and /readyz)."""
        import uvicorn

        from mlharbor.api.app import create_app
        from mlharbor.cli.main import settings_from

        settings = settings_from(ctx)
        app_ = create_app(settings)
        uvicorn.run(
            app_,
            host=host or settings.server.host,
            port=settings.server.port if port is None else port,
            ssl_certfile=certfile or settings.server.tls_certfile,
            ssl_keyfile=keyfile or settings.server.tls_keyfile,
            log_level="info",
            access_log=False,
            server_header=False,
        )
