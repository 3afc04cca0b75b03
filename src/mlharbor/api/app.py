"""The control-plane application: ``create_app(settings)`` builds it, nothing at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI, Request

from mlharbor import __version__
from mlharbor.api.errors import error_body, install_error_handlers
from mlharbor.api.requests import RequestIdMiddleware
from mlharbor.api.responses import JsonResponse

if TYPE_CHECKING:
    from mlharbor.monitoring.service import Monitor
    from mlharbor.monitoring.signals import AlertLoop
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings

# Routes anyone may call, also without credentials: orchestrators probe them.
PUBLIC_PATHS = frozenset({"/livez", "/readyz"})


def create_app(settings: Settings, *, registry: Registry | None = None) -> FastAPI:
    """Build the control-plane app for ``settings`` (opening the registry unless given)."""
    from mlharbor.api.routes import audit as audit_routes
    from mlharbor.api.routes import deployments as deployment_routes
    from mlharbor.api.routes import endpoints as endpoint_routes
    from mlharbor.api.routes import models as model_routes
    from mlharbor.api.routes import monitoring as monitoring_routes
    from mlharbor.api.routes import policies as policy_routes
    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.service import Registry as _Registry
    from mlharbor.ui import docs as ui_docs
    from mlharbor.ui import login as ui_login
    from mlharbor.ui import routes as ui_routes
    from mlharbor.ui import whoami as ui_whoami

    app = FastAPI(
        title="mlharbor",
        version=__version__,
        docs_url=None,  # /docs is mlharbor.ui.docs: Swagger UI from the package, no CDN
        openapi_url="/openapi.json",
        redoc_url=None,
        redirect_slashes=False,
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry or open_registry(settings)
    app.state.alert_loop = _alert_loop(app)
    install_error_handlers(app, debug=settings.server.debug)
    app.include_router(model_routes.router)
    app.include_router(endpoint_routes.router)
    app.include_router(monitoring_routes.router)
    app.include_router(audit_routes.router)
    app.include_router(deployment_routes.router)
    app.include_router(policy_routes.router)
    app.include_router(ui_routes.router)
    app.include_router(ui_whoami.router)
    app.include_router(ui_login.router)
    app.include_router(ui_docs.router)

    @app.get("/livez", tags=["health"])
    def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], response_model=None)
    def readyz(request: Request) -> Any:
        from sqlalchemy import text

        reg: _Registry = request.app.state.registry
        try:
            with reg.store.db.read() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return JsonResponse(
                error_body("unavailable", f"metadata database unavailable: "
                           f"{type(exc).__name__}"),
                status_code=503,
            )
        return {"status": "ready"}

    # Outermost last: transport guard (Host, body size) -> CORS -> request id -> auth -> app.
    from mlharbor.bootstrap import open_identities
    from mlharbor.security.middleware import add_auth, add_transport

    reg = app.state.registry
    add_auth(app, identities=open_identities(reg), audit=reg.store.record, settings=settings)
    app.add_middleware(RequestIdMiddleware)
    add_transport(app, settings)
    return app


def _app_monitor(app: FastAPI) -> Any:
    """``app.state.monitor``, built on first use as the monitoring routes do (one monitor, one
    prediction-log journal slot, per app; a caller may set its own before startup)."""
    monitor = getattr(app.state, "monitor", None)
    if monitor is None:
        from mlharbor.monitoring.service import Monitor

        monitor = app.state.monitor = Monitor(app.state.settings, app.state.registry)
    return monitor


class _LazyMonitor:
    """Stands for the app's monitor until it is needed (the alert loop's first tick)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(_app_monitor(self._app), name)


def _alert_loop(app: FastAPI) -> AlertLoop | None:
    """The alert loop when ``monitoring.alert_rules_file`` is set (rules are read and checked
    now; the lifespan starts and stops it). ``/api/v1/monitoring/alerts`` answers from it."""
    from mlharbor.monitoring.service import open_alerts

    loop = open_alerts(app.state.settings, cast("Monitor", _LazyMonitor(app)))
    if loop is not None:
        app.state.alerts = loop.alerts
    return loop


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    import anyio.to_thread

    loop: AlertLoop | None = getattr(app.state, "alert_loop", None)
    if loop is not None:
        _app_monitor(app)  # open the monitor once, here, not racing the routes for it
        loop.start()
    try:
        yield
    finally:
        if loop is not None:
            await anyio.to_thread.run_sync(loop.stop)
