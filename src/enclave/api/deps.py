"""FastAPI dependencies: the services of this app, and who is calling.

Routers attach :func:`require_principal` (or :func:`require_admin`) as a
router-level dependency, so a route cannot be added to them without
authentication. ``tests/unit/test_auth_routes.py`` walks the route table to
prove no route except the health checks answers without a key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
from fastapi import Depends, Request

from enclave.apps.runner import AppRunner
from enclave.apps.service import AppService
from enclave.auth.keys import KeyService
from enclave.auth.principals import Principal
from enclave.errors import AuthenticationFailed, PermissionDenied, ServiceUnavailable
from enclave.gateway.service import Gateway
from enclave.inference import InferenceService
from enclave.knowledge.grounding import GroundedChat
from enclave.knowledge.jobs import IngestionWorker
from enclave.knowledge.service import KnowledgeService
from enclave.metrics import Metrics
from enclave.providers.registry import ModelRegistry
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


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed(
            "Missing API key. Send 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    return token.strip()


async def require_principal(request: Request, svc: Services = Depends(services)) -> Principal:
    principal = svc.keys.authenticate(bearer_token(request))
    request.state.principal = principal
    return principal


async def require_admin(principal: Principal = Depends(require_principal)) -> Principal:
    if not principal.is_admin:
        raise PermissionDenied("This endpoint needs an admin key.")
    return principal
