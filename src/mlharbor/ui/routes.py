"""Routes of the dashboard: the page and its static files (vendored, never from a CDN).

The page reads the same JSON API as scripts do (``/api/v1/monitoring/...``), so it is behind the
same authentication; its rules are in the one route table (mlharbor.security.routemap).

A browser cannot send an ``Authorization`` header, so ``/ui/login`` takes an API key in a form
and keeps it in the ``mlharbor_session`` cookie (HttpOnly, SameSite=Strict, Secure over TLS),
which the auth middleware accepts for GET/HEAD only; ``POST /ui/logout`` clears it.
"""

from __future__ import annotations

import html
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from mlharbor.core.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from mlharbor.security.middleware import SESSION_COOKIE

router = APIRouter(tags=["dashboard"], include_in_schema=False)

STATIC_TYPES = {
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
# The page may run only its own files: no inline script, nothing from another origin.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'")
# The login form loads nothing at all and may only post to this origin.
LOGIN_CSP = ("default-src 'none'; img-src data:; form-action 'self'; frame-ancestors 'none'; "
             "base-uri 'none'")
NO_STORE = {"Cache-Control": "no-store"}


def _read(folder: str, name: str) -> bytes:
    return resources.files("mlharbor.ui").joinpath(folder, name).read_bytes()


@router.get("/ui")
def dashboard() -> HTMLResponse:
    return HTMLResponse(_read("templates", "dashboard.html"),
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


@router.get("/ui/static/{name}")
def static(name: str) -> Response:
    media = STATIC_TYPES.get(name)
    if media is None:
        raise NotFoundError(f"No dashboard file {name!r}.",
                            hint=f"Known files: {', '.join(sorted(STATIC_TYPES))}.")
    return Response(_read("static", name), media_type=media,
                    headers={"Cache-Control": "public, max-age=3600"})


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _login_page(request: Request, status: int = 200, error: str = "") -> HTMLResponse:
    text = _read("templates", "login.html").decode("utf-8")
    text = (text.replace("{action}", html.escape(f"{_root(request)}/ui/login"))
            .replace("{error}", html.escape(error)))
    return HTMLResponse(text, status_code=status,
                        headers={"Content-Security-Policy": LOGIN_CSP, **NO_STORE})


def _same_origin(request: Request) -> None:
    """Refuse a cross-site form post (login CSRF: logging a victim in as someone else)."""
    origin = request.headers.get("origin")
    site = request.headers.get("sec-fetch-site")
    if site == "cross-site" or (origin is not None and (
            origin == "null" or urlsplit(origin).netloc != request.headers.get("host"))):
        raise PermissionDeniedError("Cross-site login forms are refused.",
                                    hint="Open /ui/login on this server.")


def _redirect(location: str) -> Response:
    return Response(status_code=303, headers={"Location": location, **NO_STORE})


def _session_cookie(value: str, *, secure: bool, clear: bool = False) -> str:
    parts = [f"{SESSION_COOKIE}={value}", "HttpOnly", "SameSite=Strict", "Path=/"]
    if clear:
        parts += ["Max-Age=0", "Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


@router.get("/ui/login")
def login_form(request: Request) -> HTMLResponse:
    return _login_page(request)


@router.post("/ui/login", response_model=None)
async def login(request: Request) -> Response:
    """Check the form's ``key`` with the identity store; keep it in the session cookie."""
    _same_origin(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=10)
    key = (form.get("key") or [""])[0].strip()
    gate = request.app.state.login_gate
    client = request.client.host if request.client else "?"
    try:
        await run_in_threadpool(lambda: gate.check(
            key, client=client, path=request.url.path,
            request_id=getattr(request.state, "request_id", None)))
    except AuthenticationError:
        return _login_page(request, 401, "That API key is not valid.")
    response = _redirect(f"{_root(request)}/ui")
    response.headers.append("Set-Cookie",
                            _session_cookie(key, secure=request.url.scheme == "https"))
    return response


@router.post("/ui/logout", response_model=None)
def logout(request: Request) -> Response:
    _same_origin(request)
    response = _redirect(f"{_root(request)}/ui/login")
    response.headers.append("Set-Cookie", _session_cookie(
        "", secure=request.url.scheme == "https", clear=True))
    return response
