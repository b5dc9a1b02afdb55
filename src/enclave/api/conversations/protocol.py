"""Wire models of ``/api/conversations``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from enclave.apps.actions import ACTION_ID_PATTERN

ACTION_ID = f"^{ACTION_ID_PATTERN}$"


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=200)
    model: str | None = Field(None, max_length=255)


class ConversationPatch(BaseModel):
    """Only the fields sent change; an empty string or null clears one."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=200)
    model: str | None = Field(None, max_length=255)


class MessagePost(BaseModel):
    """A new user message, or the user's decision on an app's pending action."""

    model_config = ConfigDict(extra="forbid")

    content: str | None = Field(None, max_length=200_000)
    model: str = Field(min_length=1, max_length=255)
    knowledge: list[str] | None = Field(
        None, description="Knowledge bases to ground the answer in (not for app models)."
    )
    confirm: str | None = Field(None, pattern=ACTION_ID, description="A pending action to run.")
    cancel: str | None = Field(None, pattern=ACTION_ID, description="A pending action to drop.")

    @model_validator(mode="after")
    def _one_kind(self) -> MessagePost:
        decisions = [value for value in (self.confirm, self.cancel) if value is not None]
        if len(decisions) > 1:
            raise ValueError("send either confirm or cancel, not both")
        if decisions and self.content is not None and self.content.strip():
            raise ValueError("send either content or a confirm/cancel decision, not both")
        if not decisions and (self.content is None or not self.content.strip()):
            raise ValueError("content must not be empty")
        return self


class ConversationOut(BaseModel):
    """A stored :class:`~enclave.chat.conversations.Conversation`, field for field."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str | None
    model: str | None
    created_at: datetime
    updated_at: datetime


class MessageOut(BaseModel):
    """A stored :class:`~enclave.chat.conversations.Message`, field for field."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    role: str
    content: str
    extra: dict[str, Any] | None
    created_at: datetime


class ConversationDetail(ConversationOut):
    messages: list[MessageOut]
