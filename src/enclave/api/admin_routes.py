"""``/api/admin``: what the admin page shows besides keys and usage (admin key only).

Workspaces with their floor class and active keys, pages of the audit log
(newest first, filtered by workspace, outcome and time; ``next_before`` pages
on by ``seq``), and a verification of the audit chain on demand, after the
entries still queued are written. See :mod:`enclave.gateway.audit_reader`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query

from enclave.api.deps import Services, require_admin, services
from enclave.api.runners import routes as runner_routes
from enclave.input_limits import INT64_MAX

router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)])
# /api/admin/runners and /api/admin/deployments (enclave.api.runners), each admin only.
router.routes.extend(runner_routes.router.routes)


@router.get("/workspaces", summary="Workspaces with their classification and active keys")
async def workspaces(svc: Services = Depends(services)) -> dict[str, Any]:
    found = await asyncio.to_thread(svc.keys.workspaces)
    lowest = svc.gateway.routing.levels.lowest
    data = [
        {
            "name": name,
            "classification": svc.gateway.policy(name).classification or lowest,
            "keys": keys,
        }
        for name, keys in found
    ]
    return {"object": "list", "data": data}


@router.get("/audit", summary="Audit log entries, newest first")
async def audit(
    workspace: str | None = None,
    outcome: str | None = None,
    since: datetime | None = Query(None, description="ISO 8601; without a zone: UTC."),
    before: int | None = Query(
        None, ge=1, le=INT64_MAX, description="Only entries with a smaller seq."
    ),
    limit: int = Query(100, ge=1, le=1000),
    svc: Services = Depends(services),
) -> dict[str, Any]:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    page = await asyncio.to_thread(
        svc.audit_reader.entries,
        workspace=workspace,
        outcome=outcome,
        since=since,
        before=before,
        limit=limit,
    )
    return {"object": "list", "data": page.entries, "next_before": page.next_before}


@router.post("/audit/verify", summary="Verify the audit log's hash chain")
async def verify_audit(svc: Services = Depends(services)) -> dict[str, Any]:
    result = await asyncio.to_thread(svc.audit_reader.verify)
    return dataclasses.asdict(result)


@router.get("/cluster", summary="The replicas sharing this database and their heartbeats")
async def cluster(svc: Services = Depends(services)) -> dict[str, Any]:
    membership = svc.membership
    if membership is None or not svc.settings.cluster.replicas:
        return {"replicas": False, "members": []}
    members = await asyncio.to_thread(membership.members)
    return {"replicas": True, "replica": membership.replica_id, "members": members}
