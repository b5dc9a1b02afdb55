"""``/api/mcp/servers`` and ``/api/admin/mcp/clients``: MCP in use, both ways.

The first lists the MCP servers the key's workspace's apps use, each
connected to now (``enclave mcp list``); the second lists ``/mcp`` clients by
API key with their calls (the admin page, ``enclave mcp clients``).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends

from enclave.api.deps import Services, require_admin, require_principal, services
from enclave.auth.principals import Principal
from enclave.mcp.clients import mcp_clients

router = APIRouter(prefix="/api/mcp", dependencies=[Depends(require_principal)])
admin = APIRouter(prefix="/api/admin/mcp", dependencies=[Depends(require_admin)])


@router.get("/servers", summary="MCP servers used by the workspace's apps, with their health")
async def servers(
    principal: Principal = Depends(require_principal), svc: Services = Depends(services)
) -> dict[str, Any]:
    _, runner = svc.require_apps()
    return {"object": "list", "data": await runner.mcp_servers(principal)}


@admin.get("/clients", summary="/mcp clients by API key, with their calls")
async def clients(
    since: datetime | None = None, svc: Services = Depends(services)
) -> dict[str, Any]:
    await asyncio.to_thread(svc.gateway.audit.flush, 5.0)  # the calls just made count too
    found = await asyncio.to_thread(mcp_clients, svc.audit_reader.sessions, since=since)
    return {"object": "list", "data": [client.as_dict() for client in found]}
