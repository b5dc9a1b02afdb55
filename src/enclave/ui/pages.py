"""The web UI's pages: small server-rendered shells; the work is in ES modules.

Each page is a Jinja2 template (autoescaped) that lays out the landmarks,
labels and empty containers, and loads one ES module from ``/static/js``.
The module fetches the JSON APIs (``/api/...``, ``/v1/models``) with the
session cookie and fills the page in; no route here reads a database or
calls a service beyond resolving the session. There is no build step: the
files under ``static/`` are what the browser runs, shipped in the wheel.

Every HTML response carries a strict Content Security Policy (no inline
script or style, nothing from another origin), ``nosniff`` and
``Cache-Control: no-store`` (pages hold the CSRF token). A page without a
live session redirects to ``/login?next=<path>``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from enclave.api.deps import browser_session, recheck_session, services
from enclave.auth.principals import Principal

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PATH = "/static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}
# The pages, for tests that walk the route table: they answer a missing session
# with a redirect to /login (or, /login itself, with the form), not a 401.
PAGE_PATHS = frozenset({"/login", "/", "/knowledge", "/apps", "/apps/{name}", "/admin"})

router = APIRouter(include_in_schema=False)

_templates = Environment(
    loader=PackageLoader("enclave.ui", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
# Static files are revalidated on every load (see StaticAssets), so URLs need no version.
_templates.globals["static"] = lambda path: f"{STATIC_PATH}/{path}"


class StaticAssets(StaticFiles):
    """The UI's CSS, JS and images, revalidated on every load (ETag), never sniffed."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def static_files() -> StaticAssets:
    """Mount at :data:`STATIC_PATH` (``app.mount(STATIC_PATH, static_files())``)."""
    return StaticAssets(directory=STATIC_DIR)


def safe_next(path: str | None) -> str | None:
    """A same-site path to go to after sign-in, or None: never another origin,
    never a control character (header splitting), never the sign-in page itself."""
    if not path or not path.startswith("/") or path.startswith(("//", "/\\", "/login")):
        return None
    if any(ord(char) < 0x20 or char in "\\\x7f" for char in path):
        return None
    return path


def render(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    session: tuple[Principal, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A template as an HTML response with the page security headers."""
    user: dict[str, Any] | None = None
    csrf_token = ""
    if session is not None:
        principal, csrf_token = session
        user = {
            "key_id": principal.key_id,
            "key_name": principal.key_name,
            "workspace": principal.workspace,
            "is_admin": principal.is_admin,
            "role": principal.role,
            "user_id": principal.user_id,
            "user_name": principal.user_name,
        }
        if principal.user_id is not None:  # the workspaces the person may switch to
            roles = services(request).keys.roles
            user["workspaces"] = [
                {"name": name, "role": role} for name, role in roles.workspaces_of(principal.groups)
            ]
    html = _templates.get_template(template).render(
        request=request,
        user=user,
        user_json=json.dumps(user) if user else "",
        csrf_token=csrf_token,
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def render_login(
    request: Request, error: str | None, next_path: str | None, status_code: int = 200
) -> Response:
    """The sign-in page, with an error (``role=alert``) when a key was refused."""
    return render(
        request,
        "login.html",
        status_code=status_code,
        title="Sign in",
        error=error,
        next_path=safe_next(next_path),
        sso_name=_sso_name(request),
    )


def _sso_name(request: Request) -> str | None:
    """The identity provider's name for the sign-in button; None without one."""
    identity = services(request).identity
    return None if identity is None else identity.display_name


async def _session(request: Request) -> tuple[Principal, str] | None:
    svc = services(request)
    await recheck_session(request, svc)
    return await asyncio.to_thread(browser_session, request, svc)


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(
        f"/login?next={quote(target, safe='/')}", status_code=303, headers=PAGE_HEADERS
    )


async def _page(
    request: Request, template: str, *, admin_only: bool = False, **context: Any
) -> Response:
    """``template`` for a signed-in browser; others go to sign-in, non-admins of an
    ``admin_only`` page get 403 "Admins only"."""
    session = await _session(request)
    if session is None:
        return _to_login(request)
    if admin_only and not session[0].is_admin:
        return render(
            request, "forbidden.html", status_code=403, session=session, title="Admins only"
        )
    return render(request, template, session=session, **context)


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    if await _session(request) is not None:  # already signed in
        return RedirectResponse(safe_next(next) or "/", status_code=303, headers=PAGE_HEADERS)
    return render_login(request, None, next)


@router.get("/")
async def chat_page(request: Request) -> Response:
    abstain = services(request).settings.knowledge.abstain_message
    return await _page(
        request, "chat.html", title="Chat", active="chat", script="chat.js", abstain_message=abstain
    )


@router.get("/knowledge")
async def knowledge_page(request: Request) -> Response:
    return await _page(
        request, "knowledge.html", title="Knowledge", active="knowledge", script="knowledge.js"
    )


@router.get("/apps")
async def apps_page(request: Request) -> Response:
    return await _page(request, "apps.html", title="Apps", active="apps", script="apps.js")


@router.get("/apps/{name}")
async def app_page(request: Request, name: str) -> Response:
    return await _page(
        request, "app.html", title=name, active="apps", script="apps.js", app_name=name
    )


@router.get("/admin")
async def admin_page(request: Request) -> Response:
    return await _page(
        request, "admin.html", admin_only=True, title="Admin", active="admin", script="admin.js"
    )
