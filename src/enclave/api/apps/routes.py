"""``/api/apps`` and ``/api/actions``: deploying apps and confirming their actions.

Everything is scoped to the caller's workspace: another workspace's app,
draft or action is a 404. ``PUT /api/apps/{name}`` takes the canonical spec
that ``enclave apply`` sends (files already inlined) and stores a new
version only when it changed. Apps are served on ``/v1/chat/completions``
as the model ``app/<name>``; see :mod:`enclave.apps.runner`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from enclave.api.deps import Services, require_builder, require_principal, services
from enclave.api.params import PositiveInt64, input_limits
from enclave.apps.runner import AppRunner
from enclave.apps.service import AppService
from enclave.auth.principals import Principal
from enclave.input_limits import INT64_MAX, check_document
from enclave.settings import InputLimitsConfig

router = APIRouter(prefix="/api/apps", dependencies=[Depends(require_principal)])
actions = APIRouter(prefix="/api/actions", dependencies=[Depends(require_principal)])


class Apply(BaseModel):
    spec: dict[str, Any] = Field(description="The canonical App document (enclave apply).")
    dry_run: bool = False


class Draft(BaseModel):
    spec: dict[str, Any]


class Rollback(BaseModel):
    to: PositiveInt64


def app_service(svc: Services = Depends(services)) -> AppService:
    return svc.require_apps()[0]


def app_runner(svc: Services = Depends(services)) -> AppRunner:
    return svc.require_apps()[1]


@router.get("", summary="List the workspace's apps (the app store)")
async def list_apps(
    principal: Principal = Depends(require_principal),
    apps: AppService = Depends(app_service),
) -> dict[str, Any]:
    data = await asyncio.to_thread(apps.list_apps, principal.workspace_id)
    return {"object": "list", "data": data}


@router.post("/drafts", status_code=201, summary="Create a draft app to test")
async def create_draft(
    body: Draft,
    principal: Principal = Depends(require_builder),
    apps: AppService = Depends(app_service),
    limits: InputLimitsConfig = Depends(input_limits),
) -> dict[str, Any]:
    check_document(body.spec, limits, "spec")
    return await asyncio.to_thread(apps.create_draft, principal.workspace_id, body.spec)


@router.delete("/drafts/{draft_id}", status_code=204, summary="Delete a draft app")
async def delete_draft(
    draft_id: str,
    principal: Principal = Depends(require_builder),
    apps: AppService = Depends(app_service),
) -> Response:
    await asyncio.to_thread(apps.delete_draft, principal.workspace_id, draft_id)
    return Response(status_code=204)


@router.put("/{name}", summary="Apply an app: store a new version if it changed")
async def apply_app(
    name: str,
    body: Apply,
    principal: Principal = Depends(require_builder),
    apps: AppService = Depends(app_service),
    limits: InputLimitsConfig = Depends(input_limits),
) -> dict[str, Any]:
    check_document(body.spec, limits, "spec")
    result = await asyncio.to_thread(
        apps.apply,
        principal.workspace_id,
        name,
        body.spec,
        key_id=principal.key_id,
        dry_run=body.dry_run,
    )
    return result.as_dict()


@router.get("/{name}", summary="An app's current spec, YAML and latest test results")
async def get_app(
    name: str,
    version: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
    principal: Principal = Depends(require_principal),
    apps: AppService = Depends(app_service),
) -> dict[str, Any]:
    return await asyncio.to_thread(apps.get_app, principal.workspace_id, name, version)


@router.delete("/{name}", status_code=204, summary="Delete an app and its history")
async def delete_app(
    name: str,
    principal: Principal = Depends(require_builder),
    apps: AppService = Depends(app_service),
) -> Response:
    await asyncio.to_thread(apps.delete_app, principal.workspace_id, name)
    return Response(status_code=204)


@router.get("/{name}/versions", summary="An app's versions, newest first")
async def versions(
    name: str,
    principal: Principal = Depends(require_principal),
    apps: AppService = Depends(app_service),
) -> dict[str, Any]:
    data = await asyncio.to_thread(apps.versions, principal.workspace_id, name)
    return {"object": "list", "data": data}


@router.post("/{name}/rollback", summary="Make an earlier version current (as a new version)")
async def rollback(
    name: str,
    body: Rollback,
    principal: Principal = Depends(require_builder),
    apps: AppService = Depends(app_service),
) -> dict[str, Any]:
    return await asyncio.to_thread(
        apps.rollback, principal.workspace_id, name, body.to, key_id=principal.key_id
    )


@router.get("/{name}/avatar", summary="An app's avatar image")
async def avatar(
    name: str,
    principal: Principal = Depends(require_principal),
    apps: AppService = Depends(app_service),
) -> Response:
    data, media_type = await asyncio.to_thread(apps.avatar, principal.workspace_id, name)
    headers = {"cache-control": "private, max-age=300", "x-content-type-options": "nosniff"}
    if media_type == "image/svg+xml":  # an SVG can carry script: never run it as a page
        headers["content-security-policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return Response(data, media_type=media_type, headers=headers)


@router.post(
    "/{name}/test-results", summary="Record an enclave test report for the current version"
)
async def record_test_results(
    name: str,
    report: dict[str, Any],
    principal: Principal = Depends(require_builder),
    apps: AppService = Depends(app_service),
) -> dict[str, Any]:
    version = await asyncio.to_thread(
        apps.record_test_results, principal.workspace_id, name, report
    )
    return {"name": name, "version": version}


@actions.get("/{action_id}", summary="A pending (or decided) action")
async def get_action(
    action_id: str,
    principal: Principal = Depends(require_principal),
    runner: AppRunner = Depends(app_runner),
) -> dict[str, Any]:
    action = await asyncio.to_thread(runner.actions.get, principal.workspace_id, action_id)
    return action.as_dict()


@actions.post("/{action_id}/confirm", summary="Run a pending action (once)")
async def confirm_action(
    action_id: str,
    principal: Principal = Depends(require_principal),
    runner: AppRunner = Depends(app_runner),
) -> dict[str, Any]:
    return await runner.confirm(principal, action_id)


@actions.post("/{action_id}/cancel", summary="Drop a pending action")
async def cancel_action(
    action_id: str,
    principal: Principal = Depends(require_principal),
    runner: AppRunner = Depends(app_runner),
) -> dict[str, Any]:
    return await runner.cancel(principal, action_id)
