"""Wire models for the platform API under ``/api``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from enclave.auth.keys import KeyInfo
from enclave.input_limits import INT64_MAX
from enclave.settings import NAME_PATTERN


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    workspace: str = Field("default", pattern=NAME_PATTERN)
    admin: bool = False
    role: Literal["member", "builder", "admin"] | None = Field(
        None,
        description="The key's ceiling; when given it decides `admin`. Default: admin for an "
        "admin key, else builder.",
    )
    user_id: int | None = Field(
        None,
        ge=1,
        le=INT64_MAX,
        description="The user the key belongs to: it never has more rights than they have now.",
    )
    expires_at: datetime | None = Field(
        None, description="ISO 8601; a time without a zone is taken as UTC."
    )
    clearance: str | None = Field(
        None,
        description="The highest class the key may receive on /mcp and the query API "
        "(default: the workspace floor on /mcp, no limit on the query API).",
    )

    @field_validator("expires_at")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class KeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    workspace: str
    admin: bool
    status: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    clearance: str | None = None
    role: str = "builder"
    user_id: int | None = None

    @classmethod
    def of(cls, info: KeyInfo) -> KeyOut:
        return cls(
            id=info.id,
            name=info.name,
            prefix=info.prefix,
            workspace=info.workspace,
            admin=info.is_admin,
            status=info.status,
            created_at=info.created_at,
            expires_at=info.expires_at,
            revoked_at=info.revoked_at,
            clearance=info.clearance,
            role=info.role,
            user_id=info.user_id,
        )


class KeyCreated(KeyOut):
    key: str = Field(description="The secret. Shown only in this response.")


class Me(BaseModel):
    key_id: int
    key_name: str
    workspace: str
    admin: bool
    role: str = Field(description="member, builder or admin, in this workspace.")
    user_id: int | None = None
    user_name: str | None = None
    groups: list[str] = Field(default_factory=list)


class KeyClearance(BaseModel):
    """``PATCH /api/keys/{id}``: the highest class the key may receive."""

    model_config = ConfigDict(extra="forbid")

    clearance: str | None = Field(description="A class name, or null for the default.")
