"""``POST /ui/login`` and ``POST /ui/logout``: signing the web UI in and out.

Sign-in takes an API key from the login form, checks it exactly like a
Bearer key, and starts a server-side session (``auth/sessions.py``). The
browser gets only the session id, in a cookie that scripts cannot read
(``HttpOnly``), that other sites' requests do not carry (``SameSite=Strict``)
and, over https or with ``ui.secure_cookies``, that never travels in clear
(``Secure``). After sign-in the browser is sent on to ``next``, but only to a
path on this site: anything else (``https://evil``, ``//evil``, ``/\\evil``)
becomes ``/``, so the login form cannot be used as an open redirect. A form
that the browser says was posted from another site is refused.

Sign-out needs the session's CSRF token (header ``X-CSRF-Token``, or a form
field ``csrf_token`` for a plain HTML form), so another site cannot sign
people out.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.responses import RedirectResponse

from enclave.api.deps import Services, check_csrf, missing_api_key, services
from enclave.auth.sessions import CSRF_HEADER, SESSION_COOKIE
from enclave.errors import AuthenticationFailed
from enclave.ui.pages import render_login, safe_next

router = APIRouter(prefix="/ui")

LOGIN_PATH = "/ui/login"
# Routes of this module that answer without a key (the sign-in itself).
PUBLIC_PATHS = frozenset({LOGIN_PATH})


def posted_from_another_site(request: Request) -> bool:
    """True when the browser says the form came from another site (``Sec-Fetch-Site``).

    Refusing those stops login CSRF: another site signing a visitor in to the
    attacker's key, so that what the visitor types lands in the attacker's
    conversations. The fetch-metadata header is set by the browser and survives
    proxies that rewrite ``Host``; clients that send none (not browsers) pass.
    """
    return request.headers.get("sec-fetch-site", "same-origin") in ("cross-site", "same-site")


def set_session_cookie(response: Response, value: str, *, max_age: int, secure: bool) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=max_age,
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )


_LOGIN_PAGE = {"content": {"text/html": {"schema": {"type": "string"}}}}


@router.post(
    "/login",
    summary="Sign the web UI in with an API key (form post)",
    responses={
        303: {"description": "Signed in: on to the page asked for."},
        400: {"description": "The login page with the problem.", **_LOGIN_PAGE},
        401: {"description": "The login page: no key, or a key that does not work.", **_LOGIN_PAGE},
        403: {"description": "The login page: posted from another site.", **_LOGIN_PAGE},
    },
)
async def login(request: Request, svc: Services = Depends(services)) -> Response:
    form = await _form(request)
    api_key = str(form.get("api_key") or "").strip()
    next_path = safe_next(str(form.get("next") or "")) or "/"
    if posted_from_another_site(request):
        return render_login(request, "Sign in from this site's login page.", next_path, 403)
    if not api_key:
        return render_login(request, "Enter an API key.", next_path, 401)
    try:
        principal = svc.keys.authenticate(api_key)
    except AuthenticationFailed as exc:
        return render_login(request, exc.message, next_path, 401)
    previous = request.cookies.get(SESSION_COOKIE)
    if previous:  # signing in again replaces the browser's session, never adds to it
        await asyncio.to_thread(svc.sessions.delete, previous)
    session_id = await asyncio.to_thread(svc.sessions.create, principal)
    response = RedirectResponse(next_path, status_code=303)
    secure = request.url.scheme == "https" or svc.settings.ui.secure_cookies
    set_session_cookie(response, session_id, max_age=svc.sessions.ttl_s, secure=secure)
    return response


@router.post("/logout", summary="End the web UI's session")
async def logout(request: Request, svc: Services = Depends(services)) -> Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise missing_api_key()
    resolved = await asyncio.to_thread(svc.sessions.resolve, cookie)
    if resolved is not None:  # an ended session needs no token to be forgotten
        sent = request.headers.get(CSRF_HEADER)
        if sent is None:
            sent = str((await _form(request)).get("csrf_token") or "") or None
        check_csrf(sent, resolved[1])
        await asyncio.to_thread(svc.sessions.delete, cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def _form(request: Request) -> Any:
    """The form fields of a form post; nothing for any other body."""
    kind = request.headers.get("content-type", "")
    if kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return await request.form()
    return {}
