"""Wire models for the runner admin API (``/api/admin/runners``, ``/api/admin/deployments``)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from enclave.runners.deployments import DeclaredDeployment
from enclave.runners.registry import RunnerView
from enclave.runners.tokens import JoinToken


class JoinTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="Which machine it is for.")
    expires_at: datetime | None = Field(
        None, description="ISO 8601; a time without a zone is taken as UTC. Null: never."
    )
    max_clearance: str | None = Field(
        None, description="Highest clearance a runner joining with it may declare."
    )

    @field_validator("expires_at")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JoinTokenOut(BaseModel):
    id: int
    name: str
    prefix: str
    status: str
    max_clearance: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, token: JoinToken) -> JoinTokenOut:
        return cls.model_validate(token, from_attributes=True)


class JoinTokenCreated(JoinTokenOut):
    token: str = Field(description="The secret. Shown only in this response.")


class JoinTokenRevoked(JoinTokenOut):
    disconnected: list[str] = Field(description="Runners removed because they joined with it.")


def runner_out(view: RunnerView) -> dict[str, Any]:
    """A runner as JSON: devices with memory, loaded models, queue depth, tokens/s, state."""
    return dataclasses.asdict(view)


def deployment_out(declared: DeclaredDeployment) -> dict[str, Any]:
    return {
        **declared.spec.model_dump(),
        "origin": declared.origin,
        "updated_at": declared.updated_at,
    }
