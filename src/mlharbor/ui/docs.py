"""The API docs page (``/docs``): Swagger UI from the package, so it works without internet.

FastAPI's own page loads Swagger UI from a CDN and starts it with an inline script; this one
serves the vendored copy (mlharbor/ui/static, see VENDORED.md) with a script file, under the
same strict CSP as the dashboard. A browser logged in to the dashboard reads it with its
session cookie (GET only, like every cookie-authenticated request); scripts use an API key.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from mlharbor.ui.routes import html_page

router = APIRouter(tags=["docs"], include_in_schema=False)

# Swagger UI sets style attributes from script, hence 'unsafe-inline' for styles only; its
# icons are data: URIs. Scripts still come only from this origin.
DOCS_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    return html_page(request, "docs.html", DOCS_CSP)
