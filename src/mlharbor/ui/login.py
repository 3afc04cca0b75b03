"""Routes of the dashboard login: the form, ``POST /ui/login`` and ``POST /ui/logout``.

A browser cannot send an ``Authorization`` header, so ``/ui/login`` takes an API key in a form,
checks it and opens a server-side session for it (mlharbor.security.sessions). The browser gets
only the session's random token, in the ``mlharbor_session`` cookie (HttpOnly,
SameSite=Strict, Secure as ``security.cookie_secure`` says), which the auth middleware accepts
for GET/HEAD only. ``POST /ui/logout`` ends the session server-side and clears the cookie.

Both posts must come from this server's own page (login CSRF would log a victim in as the
attacker; logout CSRF would end a session): a browser always sends ``Origin`` or
``Sec-Fetch-Site`` with a form post, so a post with neither, or with either saying another
site, is refused (403).
"""

from __future__ import annotations

import html
import re
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from mlharbor.core.errors import AuthenticationError, PermissionDeniedError
from mlharbor.security.middleware import SESSION_COOKIE, LoginGate

router = APIRouter(tags=["dashboard"], include_in_schema=False)

# The login form loads only its one script and its one stylesheet, and may only post to this
# origin.
LOGIN_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src data:; "
             "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# A dashboard page to return to after login: a hash route of /ui and nothing else (an open
# redirect to another site, or markup, cannot get through).
DEEP_LINK = re.compile(r"#/[A-Za-z0-9_.~!$&'()*+,;=:@%/?-]{0,400}")
NO_STORE = {"Cache-Control": "no-store"}


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _login_page(request: Request, status: int = 200, error: str = "", next_page: str = ""
                ) -> HTMLResponse:
    text = resources.files("mlharbor.ui").joinpath("templates", "login.html").read_text("utf-8")
    text = (text.replace("{action}", html.escape(f"{_root(request)}/ui/login"))
            .replace("{error}", html.escape(error))
            .replace("{script}", html.escape(f"{_root(request)}/ui/login.js"))
            .replace("{style}", html.escape(f"{_root(request)}/ui/login.css"))
            .replace("{next}", html.escape(next_page if DEEP_LINK.fullmatch(next_page) else "")))
    return HTMLResponse(text, status_code=status,
                        headers={"Content-Security-Policy": LOGIN_CSP, **NO_STORE})


def _same_origin(request: Request) -> None:
    """Refuse a form post that does not prove it comes from this origin: it needs an
    ``Origin`` naming this host or ``Sec-Fetch-Site: same-origin``, and neither may point
    elsewhere (``same-site`` is refused too: a sibling subdomain is another party)."""
    origin = request.headers.get("origin")
    site = request.headers.get("sec-fetch-site")
    origin_ok = origin is not None and origin != "null" and (
        urlsplit(origin).netloc == request.headers.get("host"))
    if (origin is not None and not origin_ok) or (site is not None and site != "same-origin"):
        raise PermissionDeniedError(
            f"Login and logout forms posted from another site are refused (Origin: "
            f"{origin or 'none'}, Sec-Fetch-Site: {site or 'none'}).",
            hint="Open /ui/login on this server.")
    if not origin_ok and site is None:
        raise PermissionDeniedError(
            "Login and logout must be posted by a browser from this server's own page: the "
            "request carries neither an Origin header naming this host nor "
            "'Sec-Fetch-Site: same-origin'.",
            hint="Open /ui/login in a browser; scripts send 'Authorization: Bearer <key>' "
                 "instead of logging in.")


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


@router.get("/ui/login.js")
def login_script() -> Response:
    return _public_asset("login.js", "text/javascript")


@router.get("/ui/login.css")
def login_style() -> Response:
    return _public_asset("login.css", "text/css")


def _public_asset(name: str, media: str) -> Response:
    """A file the login form needs before anyone has logged in (public, like the form)."""
    body = resources.files("mlharbor.ui").joinpath("static", name).read_bytes()
    return Response(body, media_type=media, headers={"Cache-Control": "public, max-age=3600"})


def _after_login(request: Request, next_page: str) -> str:
    """Where a successful login goes: the dashboard page it was sent from, when that is one."""
    return f"{_root(request)}/ui{next_page if DEEP_LINK.fullmatch(next_page) else ''}"


@router.post("/ui/login", response_model=None)
async def login(request: Request) -> Response:
    """Check the form's ``key`` with the identity store, open a session for it and hand the
    browser the session's token (never the key) in the session cookie."""
    _same_origin(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=10)
    key = (form.get("key") or [""])[0].strip()
    next_page = (form.get("next") or [""])[0]
    gate: LoginGate = request.app.state.login_gate
    client = request.client.host if request.client else "?"
    try:
        token = await run_in_threadpool(lambda: gate.login(
            key, client=client, path=request.url.path,
            request_id=getattr(request.state, "request_id", None)))
    except AuthenticationError:
        return _login_page(request, 401, "That API key is not valid.", next_page)
    response = _redirect(_after_login(request, next_page))
    response.headers.append("Set-Cookie", _session_cookie(
        token, secure=gate.secure_cookie(request.url.scheme)))
    return response


@router.post("/ui/logout", response_model=None)
async def logout(request: Request) -> Response:
    """End the cookie's session server-side (a copy of the cookie is then worthless) and
    clear the cookie."""
    _same_origin(request)
    gate: LoginGate = request.app.state.login_gate
    token = request.cookies.get(SESSION_COOKIE)
    await run_in_threadpool(lambda: gate.logout(
        token, request_id=getattr(request.state, "request_id", None)))
    response = _redirect(f"{_root(request)}/ui/login")
    response.headers.append("Set-Cookie", _session_cookie(
        "", secure=gate.secure_cookie(request.url.scheme), clear=True))
    return response
