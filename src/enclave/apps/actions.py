"""Pending actions: API calls that wait for the user's confirmation.

An operation whose method is in an API's ``confirm`` list is never run when
the model chooses it. The runner stores it here instead, and the answer
carries the action's id. It runs only when the user confirms explicitly:
``POST /api/actions/{id}/confirm`` (the web UI's Confirm button goes through
the conversation API to the same ``enclave.confirm``), or a follow-up chat
request with ``"enclave": {"confirm": id}``. Free text never confirms: a
reply such as "yes" or "ok, but..." leaves the action pending and is answered
with how to confirm it; a reply such as "no" or "cancel" cancels it.

Leaving ``pending`` is a single conditional UPDATE (:meth:`ActionStore.claim`),
so two confirmations racing each other run the call once. Actions belong to
a workspace, and expire after ``apps.action_ttl_s``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from enclave.errors import Conflict, NotFound
from enclave.storage.models import AppActionRow

ACTION_ID_PATTERN = r"act_[0-9a-f]{16}"


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    workspace_id: int
    app_name: str
    app_ref: str
    api: str
    operation: str
    arguments: dict[str, Any]
    question: str
    status: str
    created_at: datetime
    expires_at: datetime
    result: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "app": self.app_name,
            "api": self.api,
            "operation": self.operation,
            "arguments": self.arguments,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "result": self.result,
            "confirm_url": f"/api/actions/{self.id}/confirm",
            "cancel_url": f"/api/actions/{self.id}/cancel",
        }


def _action(row: AppActionRow) -> Action:
    return Action(
        id=row.id,
        workspace_id=row.workspace_id,
        app_name=row.app_name,
        app_ref=row.app_ref,
        api=row.api,
        operation=row.operation,
        arguments=json.loads(row.arguments_json),
        question=row.question,
        status=row.status,
        created_at=row.created_at,
        expires_at=row.expires_at,
        result=json.loads(row.result_json) if row.result_json else None,
    )


class ActionStore:
    """Pending actions in the database, scoped to a workspace."""

    def __init__(self, sessions: sessionmaker[Session], ttl_s: int) -> None:
        self.sessions = sessions
        self.ttl = timedelta(seconds=ttl_s)

    def create(
        self,
        *,
        workspace_id: int,
        key_id: int | None,
        app_name: str,
        app_ref: str,
        api: str,
        operation: str,
        arguments: dict[str, Any],
        question: str,
    ) -> Action:
        now = datetime.now(UTC)
        row = AppActionRow(
            id="act_" + secrets.token_hex(8),
            workspace_id=workspace_id,
            key_id=key_id,
            app_name=app_name,
            app_ref=app_ref,
            api=api,
            operation=operation,
            arguments_json=json.dumps(arguments, ensure_ascii=False),
            question=question,
            status="pending",
            created_at=now,
            expires_at=now + self.ttl,
        )
        with self.sessions.begin() as session:
            session.add(row)
            session.flush()
            return _action(row)

    def get(self, workspace_id: int, action_id: str) -> Action:
        """The action, with ``expired`` status once past its time; 404 for other workspaces."""
        with self.sessions() as session:
            row = session.get(AppActionRow, action_id)
            if row is None or row.workspace_id != workspace_id:
                raise NotFound(
                    f"There is no action '{action_id}' in this workspace.",
                    code="action_not_found",
                )
            action = _action(row)
        if action.status == "pending" and action.expires_at < datetime.now(UTC):
            return replace(action, status="expired")
        return action

    def claim(self, workspace_id: int, action_id: str, status: str) -> Action:
        """Move a pending action to ``status`` (executed or cancelled), exactly once.

        Raises 404 for an unknown action and 409 for one already decided or expired.
        """
        action = self.get(workspace_id, action_id)
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            moved = session.execute(
                update(AppActionRow)
                .where(
                    AppActionRow.id == action_id,
                    AppActionRow.workspace_id == workspace_id,
                    AppActionRow.status == "pending",
                    AppActionRow.expires_at >= now,
                )
                .values(status=status, decided_at=now)
            )
            if not moved.rowcount:  # type: ignore[attr-defined]
                current = "expired" if action.status == "pending" else action.status
                raise Conflict(
                    f"Action '{action_id}' is {current}; only a pending action can be "
                    "confirmed or cancelled.",
                    code="action_not_pending",
                )
        return replace(action, status=status)

    def record_result(self, action_id: str, result: dict[str, Any]) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(AppActionRow)
                .where(AppActionRow.id == action_id)
                .values(result_json=json.dumps(result, ensure_ascii=False, default=str))
            )
