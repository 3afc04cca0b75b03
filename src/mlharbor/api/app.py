"""The control-plane application: ``create_app(settings)`` builds it, nothing at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from mlharbor import __version__
from mlharbor.api.errors import error_body, install_error_handlers
from mlharbor.api.requests import RequestIdMiddleware
from mlharbor.api.responses import JsonResponse
from mlharbor.core.heap import freeze_startup_objects

if TYPE_CHECKING:
    from mlharbor.bootstrap.control import ControlPlaneServices
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings

# Routes anyone may call, also without credentials: orchestrators probe them.
PUBLIC_PATHS = frozenset({"/livez", "/readyz"})


def create_app(settings: Settings, *, registry: Registry | None = None,
               services: ControlPlaneServices | None = None) -> FastAPI:
    """Build the control-plane app for ``settings`` on ``services`` (built here from the
    settings, on ``registry`` when given, unless passed). The app's lifespan starts and stops
    the services' background loops: alerts, and the job runner and trigger loop unless
    ``pipelines.run_jobs`` is off."""
    from mlharbor.api.routes import audit as audit_routes
    from mlharbor.api.routes import cards as card_routes
    from mlharbor.api.routes import deployments as deployment_routes
    from mlharbor.api.routes import endpoints as endpoint_routes
    from mlharbor.api.routes import jobs as job_routes
    from mlharbor.api.routes import models as model_routes
    from mlharbor.api.routes import monitoring as monitoring_routes
    from mlharbor.api.routes import policies as policy_routes
    from mlharbor.bootstrap import build_control_plane
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
        # mlharbor measures its own requests (/metrics); FastAPI's OpenTelemetry hooks asked
        # three providers and read the environment on every request (~10 us each) for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    services = services or build_control_plane(settings, registry=registry)
    app.state.settings = settings
    app.state.services = services
    app.state.registry = services.registry
    app.state.alert_loop = services.alert_loop
    if services.alert_loop is not None:  # /api/v1/monitoring/alerts answers from it
        app.state.alerts = services.alert_loop.alerts
    install_error_handlers(app, debug=settings.server.debug)
    app.include_router(model_routes.router)
    app.include_router(endpoint_routes.router)
    app.include_router(monitoring_routes.router)
    app.include_router(audit_routes.router)
    app.include_router(deployment_routes.router)
    app.include_router(policy_routes.router)
    app.include_router(job_routes.router)
    app.include_router(card_routes.router)  # issue 17: model cards
    from mlharbor.api.routes import attributions as attribution_routes

    app.include_router(attribution_routes.router)  # issue 17: attribution drift
    _include_mlflow(app)  # issue 16: MLflow tracking, logged models, artifacts, registry
    from mlharbor.api.routes import runs as run_routes

    app.include_router(run_routes.router)  # issue 16: experiments and runs for the dashboard
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
    from mlharbor.api.mlflow_protocol import refusal_body
    from mlharbor.security.middleware import add_auth, add_transport
    from mlharbor.serving.auth import CachedIdentities  # the one cache of verified keys

    add_auth(app, identities=services.identities, audit=services.registry.store.record,
             settings=settings, error_body=refusal_body,
             key_cache=lambda store: CachedIdentities(
                 store, ttl_s=settings.security.key_cache_ttl_s, max_stale_s=0.0))
    app.add_middleware(RequestIdMiddleware)
    add_transport(app, settings)
    return app


def _include_mlflow(app: FastAPI) -> None:
    """MLflow's REST routes; the catch-all answering unsupported ones in MLflow's shape last."""
    from mlharbor.api.routes import (
        mlflow_artifacts,
        mlflow_models,
        mlflow_registry,
        mlflow_tracking,
    )

    for router in (mlflow_tracking.router, mlflow_models.router, mlflow_registry.router,
                   mlflow_artifacts.router, mlflow_tracking.fallback):
        app.include_router(router)
    from mlharbor.api.routes.mlflow_lane import MlflowLane

    # Added before add_auth, so it runs inside it: authenticated, authorised, rate-limited.
    app.add_middleware(MlflowLane, routers=(mlflow_tracking.router, mlflow_models.router,
                                            mlflow_registry.router))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    import anyio.to_thread

    services: ControlPlaneServices = app.state.services
    mine = getattr(app.state, "monitor", None)
    if mine is not None:  # a caller's own monitor, set on the app before startup
        services.monitor = mine
    services.start()
    freeze_startup_objects()
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(services.stop)
