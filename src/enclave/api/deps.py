"""FastAPI dependencies: the services of this app, and who is calling.

Routers attach :func:`require_principal` (or :func:`require_admin`) as a
router-level dependency, so a route cannot be added to them without
authentication. ``tests/unit/test_auth_routes.py`` walks the route table to
prove no route except the public ones answers without a key.

A caller proves who it is in one of two ways (:func:`authenticate_request`):
an ``Authorization: Bearer <key>`` header (programs), or the web UI's session
cookie (browsers, ``auth/sessions.py``). The header wins when both are sent.
With the cookie, a request that can change something (anything but GET, HEAD
and OPTIONS) must also carry the session's CSRF token in ``X-CSRF-Token``.

Roles (``auth/roles.py``): :func:`require_builder` guards what changes a
workspace's knowledge bases and apps, :func:`require_admin` the platform. A
session of a person signed in with the identity provider first has their
groups re-checked with the provider when they are due (:func:`authenticate`).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field

import httpx
from fastapi import Depends, Request

from enclave.apps.runner import AppRunner
from enclave.apps.service import AppService
from enclave.auth.identity import IdentityService
from enclave.auth.keys import KeyService
from enclave.auth.principals import Principal
from enclave.auth.provisioning import Provisioning
from enclave.auth.roles import at_least
from enclave.auth.sessions import CSRF_HEADER, SESSION_COOKIE, SessionService
from enclave.chat.conversations import ConversationService
from enclave.chat.responses import ResponsesService
from enclave.cluster import Membership
from enclave.egress import EgressGuard
from enclave.errors import AuthenticationFailed, PermissionDenied, ServiceUnavailable
from enclave.gateway.audit_reader import AuditReader
from enclave.gateway.service import Gateway
from enclave.inference import InferenceService
from enclave.knowledge.grounding import GroundedChat
from enclave.knowledge.jobs import IngestionWorker
from enclave.knowledge.service import KnowledgeService
from enclave.metrics import Metrics
from enclave.providers.registry import ModelRegistry
from enclave.runners.fleet import RunnerFleet
from enclave.settings import Settings


@dataclass
class Services:
    """Everything a route may call, built once per app by ``create_app``."""

    settings: Settings
    keys: KeyService
    registry: ModelRegistry
    inference: InferenceService
    gateway: Gateway
    metrics: Metrics
    sessions: SessionService
    conversations: ConversationService
    responses: ResponsesService
    audit_reader: AuditReader
    metrics_token: str | None = None
    started: int = field(default_factory=lambda: int(time.time()))
    # None when no embedding model is configured; `knowledge_problem` says why.
    knowledge: KnowledgeService | None = None
    grounding: GroundedChat | None = None
    ingestion: IngestionWorker | None = None
    knowledge_problem: str = "Knowledge is not available."
    apps: AppService | None = None
    app_runner: AppRunner | None = None
    apps_http: httpx.AsyncClient | None = None
    # The outbound address guard for every URL the server fetches (egress.allow).
    egress: EgressGuard = field(default_factory=EgressGuard)
    # Joined runners, their deployments and the placement loop.
    runners: RunnerFleet | None = None
    # Sign-in with the identity provider (identity.oidc); None: API keys only.
    identity: IdentityService | None = None
    # SCIM provisioning by the identity provider (identity.scim); None: /scim/v2 is off.
    provisioning: Provisioning | None = None
    # This replica and its heartbeat (started only with cluster.replicas).
    membership: Membership | None = None

    def require_knowledge(self) -> KnowledgeService:
        if self.knowledge is None:
            raise ServiceUnavailable(self.knowledge_problem, code="knowledge_unavailable")
        return self.knowledge

    def require_apps(self) -> tuple[AppService, AppRunner]:
        if self.apps is None or self.app_runner is None:
            raise ServiceUnavailable("Apps are not available yet.", code="apps_unavailable")
        return self.apps, self.app_runner

    def require_grounding(self) -> GroundedChat:
        if self.grounding is None:
            raise ServiceUnavailable(self.knowledge_problem, code="knowledge_unavailable")
        return self.grounding


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def missing_api_key() -> AuthenticationFailed:
    return AuthenticationFailed(
        "Missing API key. Send 'Authorization: Bearer <key>'.", code="missing_api_key"
    )


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise missing_api_key()
    return token.strip()


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def authenticate_request(request: Request, svc: Services) -> Principal:
    """Who is calling: the Bearer key if there is an ``Authorization`` header, else the
    session cookie (plus the CSRF token for unsafe methods).

    Raises ``AuthenticationFailed`` (401: no credentials, a bad key, an ended session)
    or ``PermissionDenied`` with code ``csrf_failed`` (403).
    """
    if "authorization" in request.headers:  # the hot path: one lookup, then the key cache
        return svc.keys.authenticate(bearer_token(request))
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise missing_api_key()
    resolved = svc.sessions.resolve(cookie)
    if resolved is None:
        raise AuthenticationFailed("Your session has ended. Sign in again.", code="session_expired")
    principal, csrf = resolved
    if request.method not in SAFE_METHODS:
        check_csrf(request.headers.get(CSRF_HEADER), csrf)
    return principal


async def recheck_session(request: Request, svc: Services) -> None:
    """Re-check a signed-in person's groups with the provider when due (cookie only)."""
    if svc.identity is None or "authorization" in request.headers:
        return
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await svc.identity.recheck(cookie)


async def authenticate(request: Request, svc: Services) -> Principal:
    """:func:`authenticate_request`, after the provider re-check a session may be due."""
    await recheck_session(request, svc)
    return authenticate_request(request, svc)


def check_csrf(sent: str | None, expected: str) -> None:
    """Constant-time comparison of a presented CSRF token with the session's."""
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise PermissionDenied(
            f"This request needs the session's CSRF token in the {CSRF_HEADER} header.",
            code="csrf_failed",
        )


def browser_session(request: Request, svc: Services) -> tuple[Principal, str] | None:
    """The principal and CSRF token of the request's session cookie, or None.

    For pages: they redirect to the sign-in page instead of answering 401.
    """
    cookie = request.cookies.get(SESSION_COOKIE)
    return svc.sessions.resolve(cookie) if cookie else None


async def require_principal(request: Request, svc: Services = Depends(services)) -> Principal:
    principal = await authenticate(request, svc)
    request.state.principal = principal
    return principal


async def require_builder(principal: Principal = Depends(require_principal)) -> Principal:
    """Managing knowledge bases and applying apps: builders and admins."""
    if not at_least(principal.role, "builder"):
        raise PermissionDenied(
            "This needs the builder role in the workspace; you are a member.", code="needs_builder"
        )
    return principal


async def require_admin(principal: Principal = Depends(require_principal)) -> Principal:
    if not principal.is_admin:
        raise PermissionDenied("This endpoint needs an admin key.")
    return principal
