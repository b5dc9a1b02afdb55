"""``/api``: the platform API (me, providers, usage, API keys). Admin routes need an admin key."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from enclave.api.deps import Services, require_admin, require_principal, services
from enclave.api.params import ResourceId, input_limits
from enclave.api.platform.protocol import KeyClearance, KeyCreate, KeyCreated, KeyOut, Me
from enclave.auth.principals import Principal
from enclave.errors import PermissionDenied
from enclave.input_limits import INT64_MAX, check_text
from enclave.settings import InputLimitsConfig

router = APIRouter(prefix="/api", dependencies=[Depends(require_principal)])
admin = APIRouter(prefix="/api", dependencies=[Depends(require_admin)])


@router.get("/me", summary="The calling key and its workspace")
async def me(principal: Principal = Depends(require_principal)) -> Me:
    return Me(
        key_id=principal.key_id,
        key_name=principal.key_name,
        workspace=principal.workspace,
        admin=principal.is_admin,
        role=principal.role or "member",
        user_id=principal.user_id,
        user_name=principal.user_name,
        groups=sorted(principal.groups),
    )


@router.get("/providers", summary="Providers with their health, models and load")
async def providers(svc: Services = Depends(services)) -> list[dict[str, Any]]:
    return await svc.gateway.provider_status()


@router.get("/usage", summary="Token usage by day, workspace, key, provider and model")
async def usage(
    since: date | None = None,
    until: date | None = None,
    workspace: str | None = None,
    key_id: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
    principal: Principal = Depends(require_principal),
    svc: Services = Depends(services),
) -> dict[str, Any]:
    """Admins see every workspace; other keys see only their own workspace."""
    if not principal.is_admin:
        if workspace not in (None, principal.workspace):
            raise PermissionDenied("A non-admin key can only read its own workspace's usage.")
        workspace = principal.workspace
    lines = await asyncio.to_thread(
        svc.gateway.usage.report, since=since, until=until, workspace=workspace, key_id=key_id
    )
    return {"object": "list", "data": [line.as_dict() for line in lines]}


@admin.get("/keys", summary="List API keys")
async def list_keys(
    workspace: str | None = None, svc: Services = Depends(services)
) -> list[KeyOut]:
    return [KeyOut.of(info) for info in svc.keys.list(workspace)]


@admin.post("/keys", status_code=201, summary="Create an API key (the secret is shown once)")
async def create_key(
    body: KeyCreate,
    svc: Services = Depends(services),
    limits: InputLimitsConfig = Depends(input_limits),
) -> KeyCreated:
    check_text(body.name, "name", limits.max_name_chars, "max_name_chars")
    clearance = _clearance(svc, body.clearance)
    secret, info = svc.keys.create(
        body.name,
        workspace=body.workspace,
        is_admin=body.admin,
        expires_at=body.expires_at,
        clearance=clearance,
        user_id=body.user_id,
        role=body.role,
    )
    return KeyCreated(**KeyOut.of(info).model_dump(), key=secret)


def _clearance(svc: Services, value: str | None) -> str | None:
    levels = svc.gateway.routing.levels
    return None if value is None else levels.parse(value, where="", param="clearance")


@admin.patch("/keys/{key_id}", summary="Set the highest class an API key may receive")
async def set_key_clearance(
    key_id: ResourceId, body: KeyClearance, svc: Services = Depends(services)
) -> KeyOut:
    return KeyOut.of(svc.keys.set_clearance(key_id, _clearance(svc, body.clearance)))


@admin.delete("/keys/{key_id}", summary="Revoke an API key")
async def revoke_key(
    key_id: ResourceId, request: Request, svc: Services = Depends(services)
) -> KeyOut:
    return KeyOut.of(svc.keys.revoke(key_id))


@router.get("/openapi.json", summary="This API's OpenAPI document", include_in_schema=False)
async def openapi(request: Request) -> dict[str, Any]:
    document: dict[str, Any] = request.app.openapi()
    return document
