"""The control-plane application: ``create_app(settings)`` builds it, nothing at import time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from mlharbor import __version__
from mlharbor.api.errors import error_body, install_error_handlers
from mlharbor.api.requests import RequestIdMiddleware
from mlharbor.api.responses import JsonResponse

if TYPE_CHECKING:
    from mlharbor.registry.service import Registry
    from mlharbor.settings import Settings

# Routes anyone may call, also without credentials: orchestrators probe them.
PUBLIC_PATHS = frozenset({"/livez", "/readyz"})


def create_app(settings: Settings, *, registry: Registry | None = None) -> FastAPI:
    """Build the control-plane app for ``settings`` (opening the registry unless given)."""
    from mlharbor.api.routes import endpoints as endpoint_routes
    from mlharbor.api.routes import models as model_routes
    from mlharbor.api.routes import monitoring as monitoring_routes
    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.service import Registry as _Registry
    from mlharbor.ui import routes as ui_routes

    app = FastAPI(
        title="mlharbor",
        version=__version__,
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.registry = registry or open_registry(settings)
    install_error_handlers(app, debug=settings.server.debug)
    app.include_router(model_routes.router)
    app.include_router(endpoint_routes.router)
    app.include_router(monitoring_routes.router)
    app.include_router(ui_routes.router)

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
