"""Routes: runners that joined, their join tokens, and the declared deployments.

``/api/admin/...`` is admin only. ``POST /api/runners/register`` and
``/api/runners/heartbeat`` are what ``enclave runner --join`` calls: they take
the join token as the bearer instead of an API key (a bad, expired or revoked
one gets 401 and registers nothing). The work is done by the app's
:class:`~enclave.runners.fleet.RunnerFleet` (``Services.runners``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request

from enclave.api.deps import Services, bearer_token, require_admin, services
from enclave.api.params import ResourceId
from enclave.api.runners.protocol import (
    JoinTokenCreate,
    JoinTokenCreated,
    JoinTokenOut,
    JoinTokenRevoked,
    deployment_out,
    runner_out,
)
from enclave.errors import InvalidRequest, ServiceUnavailable
from enclave.runners.control import RunnerControl
from enclave.runners.fleet import RunnerFleet

# Its routes are added to enclave.api.admin_routes.router, so they are served with it.
router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)])


# Authenticated by the join token, not an API key; added to the app next to `router`.
joining = APIRouter(prefix="/api/runners")


def runner_fleet(svc: Services = Depends(services)) -> RunnerFleet:
    if svc.runners is None:
        raise ServiceUnavailable("Runners are not available yet.", code="runners_unavailable")
    return svc.runners


def runner_control(fleet: RunnerFleet = Depends(runner_fleet)) -> RunnerControl:
    return fleet.control


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


@joining.post("/register", summary="A runner joins (bearer: its join token)")
async def register_runner(
    request: Request, fleet: RunnerFleet = Depends(runner_fleet)
) -> dict[str, Any]:
    secret = bearer_token(request)
    return await fleet.register(secret, await _json_object(request))


@joining.post("/heartbeat", summary="A joined runner's figures (bearer: its join token)")
async def runner_heartbeat(
    request: Request, fleet: RunnerFleet = Depends(runner_fleet)
) -> dict[str, Any]:
    secret = bearer_token(request)
    return await fleet.heartbeat(secret, await _json_object(request))


@router.get("/runners", summary="Runners with devices, memory, loaded models, load and state")
async def list_runners(control: RunnerControl = Depends(runner_control)) -> dict[str, Any]:
    control.registry.sweep()
    return {"object": "list", "data": [runner_out(v) for v in control.registry.list_runners()]}


@router.get("/runners/tokens", summary="Join tokens (never their secrets)")
async def list_tokens(control: RunnerControl = Depends(runner_control)) -> list[JoinTokenOut]:
    tokens = await asyncio.to_thread(control.tokens.list)
    return [JoinTokenOut.of(token) for token in tokens]


@router.post(
    "/runners/tokens", status_code=201, summary="Create a join token (the secret is shown once)"
)
async def create_token(
    body: JoinTokenCreate, control: RunnerControl = Depends(runner_control)
) -> JoinTokenCreated:
    secret, token = await asyncio.to_thread(
        control.tokens.create,
        body.name,
        expires_at=body.expires_at,
        max_clearance=body.max_clearance,
    )
    return JoinTokenCreated(**JoinTokenOut.of(token).model_dump(), token=secret)


@router.delete("/runners/tokens/{token_id}", summary="Revoke a join token and drop its runners")
async def revoke_token(
    token_id: ResourceId, fleet: RunnerFleet = Depends(runner_fleet)
) -> JoinTokenRevoked:
    control = fleet.control
    token = await asyncio.to_thread(control.tokens.revoke, token_id)
    gone = control.registry.forget_token(token.id)
    fleet.forget_runners(gone)
    return JoinTokenRevoked(**JoinTokenOut.of(token).model_dump(), disconnected=gone)


@router.get("/deployments", summary="Declared deployments (config and applied)")
async def list_deployments(control: RunnerControl = Depends(runner_control)) -> dict[str, Any]:
    declared = await asyncio.to_thread(control.deployments.effective)
    return {"object": "list", "data": [deployment_out(d) for d in declared]}
