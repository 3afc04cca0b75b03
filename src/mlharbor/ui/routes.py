"""Routes of the dashboard: the page and its static files (vendored, never from a CDN).

One page with hash routes (``#/models``, ``#/endpoints/churn``, ``#/drift?endpoint=churn``,
``#/alerts``, ``#/deployments``, ``#/audit``, ``#/jobs``, ``#/jobs/{id}``, ``#/experiments/{name}``,
``#/experiments/{name}/runs/{id}``, ``#/experiments/{name}/diff/{a}/{b}``) that reads the same
JSON API as scripts do (``/api/v1/...``), so it is behind the same authentication and sees
only what its caller may; its rules are in the one route table (mlharbor.security.routemap).
Data is put in the page as text, never as HTML.

Signing in (``/ui/login``, ``/ui/logout``) lives in mlharbor.ui.login.
"""

from __future__ import annotations

import html
from importlib import resources
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response

from mlharbor.core.errors import NotFoundError

router = APIRouter(tags=["dashboard"], include_in_schema=False)

STATIC_TYPES = {
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "dashboard.css": "text/css",
    # /docs (mlharbor.ui.docs): the vendored Swagger UI and the script that starts it.
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "docs.js": "text/javascript",
    # The page's own scripts: shared helpers, charts, one file per group of pages, the router.
    **{name: "text/javascript" for name in (
        "core.js", "charts.js", "models.js", "endpoints.js", "monitoring.js", "ledger.js",
        "jobs.js", "experiments.js", "dashboard.js")},
}
# The page may run only its own files: no inline script, nothing from another origin.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'")


def read_asset(folder: str, name: str) -> bytes:
    """A file shipped in the package under mlharbor/ui/``folder``."""
    return resources.files("mlharbor.ui").joinpath(folder, name).read_bytes()


def html_page(request: Request, template: str, csp: str) -> HTMLResponse:
    """One of the package's pages, its ``{root}`` set to the app's root path (the page's
    <base>, so every URL in it is relative and works behind a proxy prefix)."""
    root = html.escape(str(request.scope.get("root_path", "")).rstrip("/"))
    page = read_asset("templates", template).decode("utf-8").replace("{root}", root)
    return HTMLResponse(page, headers={"Content-Security-Policy": csp,
                                       "Cache-Control": "no-store"})


@router.get("/ui")
def dashboard(request: Request) -> HTMLResponse:
    # <base> is {root}/ui, so "#/models" stays on this page and "api/v1/..." goes to
    # {root}/api/v1.
    return html_page(request, "dashboard.html", CSP)


@router.get("/ui/models/{name}/versions/{version}/card")
def model_card(request: Request, name: str,
               version: Annotated[int, Path(ge=1, le=2**31 - 1)]) -> HTMLResponse:
    """The version's model card as a page of the dashboard (the same HTML as
    ``mlharbor models card --format html``), with a link back to the version."""
    from mlharbor.api.routes.models import REPORT_CSP
    from mlharbor.pipelines.cardrender import render_card_html
    from mlharbor.pipelines.modelcard import build_card, version_ref

    card = build_card(request.app.state.registry, version_ref(name, version))
    root = str(request.scope.get("root_path", "")).rstrip("/")
    back = f"{root}/ui#/models/{quote(name, safe='')}/{version}"
    return HTMLResponse(render_card_html(card, back_link=back), headers={
        "Content-Security-Policy": REPORT_CSP, "Cache-Control": "no-store"})


@router.get("/ui/static/{name}")
def static(name: str) -> Response:
    media = STATIC_TYPES.get(name)
    if media is None:
        raise NotFoundError(f"No dashboard file {name!r}.",
                            hint=f"Known files: {', '.join(sorted(STATIC_TYPES))}.")
    return Response(read_asset("static", name), media_type=media,
                    headers={"Cache-Control": "public, max-age=3600"})
