"""Run the serving app under uvicorn (uvloop + httptools), draining in-flight work on SIGTERM.

uvicorn stops accepting connections on SIGTERM/SIGINT, waits up to ``drain_timeout_s`` for the
requests in flight to finish, then runs the app's shutdown (stop polling, flush the sink).
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.registry.service import Registry
    from mlharbor.security.identities import IdentityStore
    from mlharbor.settings import Settings
    from mlharbor.telemetry.metrics import ServingMetrics

log = logging.getLogger("mlharbor.serving")


def run_server(
    settings: Settings, registry: Registry, *, identities: IdentityStore | None = None,
    ref: str | None = None, host: str | None = None, port: int | None = None,
    sink: Any = None, metrics: ServingMetrics | None = None, on_started: Any = None,
) -> None:
    """Serve until SIGTERM/SIGINT; the caller (an entry point) opens what is passed in."""
    import uvicorn

    from mlharbor.serving.app import create_serving_app

    if ref is not None:
        registry.get_version(ref)  # fail fast, with the registry's message, on a bad reference
    app = create_serving_app(settings, registry, ref=ref, identities=identities, sink=sink,
                             metrics=metrics)
    bind_host = host or settings.server.host
    bind_port = settings.server.port if port is None else port
    config = uvicorn.Config(
        app, host=bind_host, port=bind_port, loop="uvloop", http="httptools",
        lifespan="on", access_log=False, server_header=False, log_config=None,
        log_level="info", timeout_graceful_shutdown=int(settings.serving.drain_timeout_s) or None,
        ssl_certfile=settings.server.tls_certfile, ssl_keyfile=settings.server.tls_keyfile,
    )
    server = uvicorn.Server(config)
    # uvicorn drains, restores the previous handlers and re-raises the signal it caught; with
    # these handlers that re-raise ends the process with status 0 instead of "killed".
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    log.info("serving %s on http://%s:%d", ref or "every endpoint", bind_host, bind_port,
             extra={"event": "serving.start"})
    server.run()


def _exit_cleanly(signum: int, frame: Any) -> None:
    sys.exit(0)
