"""Health checks (open) and Prometheus metrics (admin key or metrics token).

``/livez`` (and its older name ``/healthz``): the process answers; Kubernetes
restarts a replica only when this fails. ``/readyz``: this replica should get
traffic: models loaded, database reachable, and not draining (after SIGTERM,
see ``cli/serve.py``); load balancers and Kubernetes take it out of rotation
while it answers 503. The shared limiter (Redis) is reported but not required:
when it is down every replica answers 503 to limited requests anyway, and
taking them all out of rotation would only hide the reason.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from enclave.api.deps import Services, bearer_token, services
from enclave.errors import PermissionDenied
from enclave.providers.openai_upstream import OpenAIUpstream

router = APIRouter()

# Only these two routes answer without a key.
PUBLIC_PATHS = frozenset({"/livez", "/healthz", "/readyz"})


@router.get("/livez", summary="Liveness: the process is up")
@router.get("/healthz", summary="Liveness (older name of /livez)")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: models loaded and database reachable",
    responses={503: {"description": "Not ready: the checks say what is not."}},
)
async def readyz(request: Request, svc: Services = Depends(services)) -> JSONResponse:
    checks: dict[str, Any] = {}
    if getattr(request.app.state, "draining", False):
        return JSONResponse(
            {
                "status": "draining",
                "checks": {"draining": "stopping: finishing requests in flight"},
            },
            status_code=503,
        )
    try:
        with request.app.state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports, it does not raise
        checks["database"] = f"error: {type(exc).__name__}"
    required = ["database"]
    for provider in svc.registry.providers:
        name = f"provider:{provider.name}"
        if isinstance(provider, OpenAIUpstream):
            # Upstream outages are routed around, and a restart would not fix them;
            # report the circuit without probing (this route needs no key).
            breaker = svc.gateway.routing.breakers.get(provider.name)
            state = breaker.state if breaker else "closed"
            checks[name] = "ok" if state == "closed" else f"circuit {state}"
            continue
        health = await provider.health()
        checks[name] = "ok" if health.ok else health.detail or "down"
        required.append(name)
    if svc.membership is not None and svc.settings.cluster.replicas:
        checks["replica"] = svc.membership.replica_id
    ready = svc.registry.started and all(checks[name] == "ok" for name in required)
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


async def require_metrics_reader(request: Request, svc: Services = Depends(services)) -> None:
    token = bearer_token(request)
    if svc.metrics_token and hmac.compare_digest(token.encode(), svc.metrics_token.encode()):
        return
    principal = svc.keys.authenticate(token)
    if not principal.is_admin:
        raise PermissionDenied("Metrics need an admin key or the metrics token.")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    dependencies=[Depends(require_metrics_reader)],
    response_class=PlainTextResponse,
)
async def metrics(svc: Services = Depends(services)) -> Response:
    await svc.inference.refresh_gauges()
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
