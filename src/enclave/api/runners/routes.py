"""Routes: runners that joined, their join tokens, and the declared deployments.

Admin only. The :class:`~enclave.runners.control.RunnerControl` lives on
``app.state.runner_control``; until the runner wiring builds it at start-up,
the first request here builds it over the app's database.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy.orm import sessionmaker

from enclave.api.deps import Services, require_admin, services
from enclave.api.params import ResourceId
from enclave.api.runners.protocol import (
    JoinTokenCreate,
    JoinTokenCreated,
    JoinTokenOut,
    JoinTokenRevoked,
    deployment_out,
    runner_out,
)
from enclave.runners.control import RunnerControl

# Its routes are added to enclave.api.admin_routes.router, so they are served with it.
router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)])


def runner_control(request: Request, svc: Services = Depends(services)) -> RunnerControl:
    state = request.app.state
    control: RunnerControl | None = getattr(state, "runner_control", None)
    if control is None:
        sessions = sessionmaker(state.engine, expire_on_commit=False)
        control = state.runner_control = RunnerControl.build(svc.settings, sessions, svc.metrics)
    return control


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
    token_id: ResourceId, control: RunnerControl = Depends(runner_control)
) -> JoinTokenRevoked:
    token = await asyncio.to_thread(control.tokens.revoke, token_id)
    gone = control.registry.forget_token(token.id)
    return JoinTokenRevoked(**JoinTokenOut.of(token).model_dump(), disconnected=gone)


@router.get("/deployments", summary="Declared deployments (config and applied)")
async def list_deployments(control: RunnerControl = Depends(runner_control)) -> dict[str, Any]:
    declared = await asyncio.to_thread(control.deployments.effective)
    return {"object": "list", "data": [deployment_out(d) for d in declared]}
