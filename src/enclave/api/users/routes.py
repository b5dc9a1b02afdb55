"""``/api/admin/users``: the people who signed in with the identity provider (admins only).

Listing shows each user's groups as the provider last sent them. Disabling a
user stops their sessions and keys at their next request; enabling one lets a
person in who signed in while ``identity.self_registration`` was off.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

from enclave.api.deps import Services, require_admin, services
from enclave.api.params import ResourceId

router = APIRouter(prefix="/api/admin/users", dependencies=[Depends(require_admin)])


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    disabled: bool


@router.get("", summary="Users who signed in, with their groups and roles")
async def list_users(svc: Services = Depends(services)) -> dict[str, Any]:
    users = await asyncio.to_thread(svc.keys.users.list)
    roles = svc.keys.roles
    data = []
    for user in users:
        entry = user.as_dict()
        entry["admin"] = roles.is_admin(user.groups)
        entry["workspaces"] = dict(roles.workspaces_of(user.groups))
        data.append(entry)
    return {"object": "list", "data": data}


@router.patch("/{user_id}", summary="Enable or disable a user")
async def change_user(
    user_id: ResourceId, body: UserChange, svc: Services = Depends(services)
) -> dict[str, Any]:
    user = await asyncio.to_thread(svc.keys.users.set_disabled, user_id, body.disabled)
    return user.as_dict()
