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
people out. A person signed in with the identity provider is then sent to the
provider's ``end_session_endpoint`` (when it has one) to sign out there too.

With ``identity.oidc`` configured, ``GET /ui/oidc/login`` sends the browser to
the provider (``auth/oidc.py``: PKCE, ``state``, ``nonce``), keeping those
three values in a cookie for ``/ui/oidc`` only (``SameSite=Lax``: the provider
sends the browser back with a top-level navigation from its own site, which a
``Strict`` cookie would miss; ten minutes, one use). ``GET /ui/oidc/callback``
checks ``state`` against the cookie, lets :class:`IdentityService` verify the
sign-in, and answers with a page that moves on to ``next`` itself: the
session cookie is ``SameSite=Strict``, and a redirect chain that began on the
provider's site would not carry it on its first request.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.responses import JSONResponse, RedirectResponse

from enclave.api.deps import Services, check_csrf, missing_api_key, services
from enclave.auth.identity import CALLBACK_PATH, signed_in_refusal
from enclave.auth.oidc import PendingSignIn
from enclave.auth.sessions import CSRF_HEADER, SESSION_COOKIE
from enclave.errors import AuthenticationFailed, EnclaveError, NotFound, PermissionDenied
from enclave.ui.pages import PAGE_HEADERS, render, render_login, safe_next

router = APIRouter(prefix="/ui")

LOGIN_PATH = "/ui/login"
OIDC_LOGIN_PATH = "/ui/oidc/login"
# Routes of this module that answer without a key (the sign-in itself).
PUBLIC_PATHS = frozenset({LOGIN_PATH, OIDC_LOGIN_PATH, CALLBACK_PATH})
# The provider sign-in under way: state, nonce and PKCE verifier (see the docstring).
PENDING_COOKIE = "enclave_oidc"
PENDING_PATH = "/ui/oidc"
PENDING_MAX_AGE_S = 600


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
    target = "/login"
    if resolved is not None:  # an ended session needs no token to be forgotten
        sent = request.headers.get(CSRF_HEADER)
        if sent is None:
            sent = str((await _form(request)).get("csrf_token") or "") or None
        check_csrf(sent, resolved[1])
        if svc.identity is not None:
            after = (svc.settings.public_url or "") + "/login"
            target = await svc.identity.sign_out_url(cookie, after) or target
        await asyncio.to_thread(svc.sessions.delete, cookie)
    response: Response
    if "application/json" in request.headers.get("accept", ""):
        # The page's script (layout.js) signs out with fetch, which cannot follow a
        # redirect to the provider's site; it goes to ``next`` itself.
        response = JSONResponse({"signed_out": True, "next": target})
    else:
        response = RedirectResponse(target, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.post("/workspace", summary="Move a signed-in person's session to another workspace")
async def switch_workspace(request: Request, svc: Services = Depends(services)) -> Response:
    """Form field ``workspace`` (and ``csrf_token``, or the header): one the person's
    groups give a role in. Only for people signed in with the identity provider."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise missing_api_key()
    resolved = await asyncio.to_thread(svc.sessions.resolve, cookie)
    if resolved is None:
        raise AuthenticationFailed("Your session has ended. Sign in again.", code="session_expired")
    principal, csrf = resolved
    form = await _form(request)
    check_csrf(request.headers.get(CSRF_HEADER) or str(form.get("csrf_token") or ""), csrf)
    workspace = str(form.get("workspace") or "")
    if principal.user_id is None or principal.user_name is None:
        raise PermissionDenied(
            "Only people signed in with the identity provider switch workspaces."
        )
    if svc.keys.roles.role_in(principal.groups, workspace) is None:
        raise PermissionDenied(f"You have no role in workspace '{workspace[:64]}'.", code="no_role")
    key_id = await asyncio.to_thread(
        svc.keys.sign_in_key, principal.user_id, principal.user_name, workspace
    )
    await asyncio.to_thread(svc.sessions.switch_key, cookie, key_id)
    return RedirectResponse("/", status_code=303)


async def _form(request: Request) -> Any:
    """The form fields of a form post; nothing for any other body."""
    kind = request.headers.get("content-type", "")
    if kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return await request.form()
    return {}


def _pending_value(pending: PendingSignIn) -> str:
    data = json.dumps([pending.state, pending.nonce, pending.code_verifier, pending.next_path])
    return base64.urlsafe_b64encode(data.encode()).decode()


def _pending_of(value: str | None) -> PendingSignIn | None:
    if not value:
        return None
    try:
        state, nonce, verifier, next_path = json.loads(base64.urlsafe_b64decode(value.encode()))
    except ValueError:
        return None
    if not all(isinstance(v, str) for v in (state, nonce, verifier, next_path)):
        return None
    return PendingSignIn(state, nonce, verifier, safe_next(next_path) or "/")


def _cookie_secure(request: Request, svc: Services) -> bool:
    return request.url.scheme == "https" or svc.settings.ui.secure_cookies


def _forget_pending(response: Response) -> Response:
    response.delete_cookie(PENDING_COOKIE, path=PENDING_PATH, httponly=True, samesite="lax")
    return response


@router.get("/oidc/login", summary="Sign the web UI in with the identity provider")
async def oidc_login(
    request: Request, next: str | None = None, svc: Services = Depends(services)
) -> Response:
    if svc.identity is None:
        raise NotFound("Sign-in with an identity provider is not configured.")
    next_path = safe_next(next) or "/"
    try:
        url, pending = await svc.identity.begin(next_path)
    except EnclaveError as exc:
        return render_login(request, signed_in_refusal(exc), next_path, exc.status_code)
    response = RedirectResponse(url, status_code=303, headers=PAGE_HEADERS)
    response.set_cookie(
        PENDING_COOKIE,
        _pending_value(pending),
        max_age=PENDING_MAX_AGE_S,
        path=PENDING_PATH,
        secure=_cookie_secure(request, svc),
        httponly=True,
        samesite="lax",
    )
    return response


@router.get("/oidc/callback", summary="Where the identity provider sends the browser back")
async def oidc_callback(
    request: Request,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    svc: Services = Depends(services),
) -> Response:
    if svc.identity is None:
        raise NotFound("Sign-in with an identity provider is not configured.")
    pending = _pending_of(request.cookies.get(PENDING_COOKIE))
    if pending is None:
        problem = "This sign-in was not started here, or took too long. Sign in again."
        return _forget_pending(render_login(request, problem, None, 400))
    if error is not None:
        problem = f"The identity provider did not sign you in ({error[:64]})."
        return _forget_pending(render_login(request, problem, pending.next_path, 401))
    if not state or not hmac.compare_digest(state.encode(), pending.state.encode()):
        problem = "This sign-in does not match the one started here (state). Sign in again."
        return _forget_pending(render_login(request, problem, pending.next_path, 400))
    if not code:
        problem = "The identity provider sent no authorization code."
        return _forget_pending(render_login(request, problem, pending.next_path, 400))
    try:
        result = await svc.identity.finish(code, pending)
    except EnclaveError as exc:
        problem = signed_in_refusal(exc)
        return _forget_pending(render_login(request, problem, pending.next_path, exc.status_code))
    previous = request.cookies.get(SESSION_COOKIE)
    if previous:  # signing in again replaces the browser's session, never adds to it
        await asyncio.to_thread(svc.sessions.delete, previous)
    response = render(
        request,
        "signed_in.html",
        title="Signed in",
        next_path=pending.next_path,
        who=result.user.name,
    )
    set_session_cookie(
        response,
        result.session_id,
        max_age=svc.sessions.ttl_s,
        secure=_cookie_secure(request, svc),
    )
    return _forget_pending(response)
