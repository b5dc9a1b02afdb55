"""Reading the audit log for people: filtered pages of entries, and verification on demand.

The writer (:class:`~enclave.gateway.audit.AuditLog`) and the checker
(:func:`~enclave.gateway.audit.verify_chain`) live in ``audit.py``; this is
the admin API's view. Verification uses the log's own head file, checkpoint
file and trusted public keys, so it checks the signatures too. Entries are
read from the hashed ``payload``, the one copy that verification vouches
for, and filtered on the indexed columns that are copied out of it. Pages go
newest first and are cut by ``seq``
(``before``), which is stable while new entries arrive, unlike an offset.
Prompt and response text (kept only for workspaces that opt in) stays out of
listings; ``enclave audit export`` has it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from enclave.gateway.audit import AuditLog, VerifyResult
from enclave.storage.models import AuditEntryRow

LISTED_FIELDS = (
    "time",
    "workspace",
    "key_id",
    "user_id",
    "endpoint",
    "requested_model",
    "classification",
    "reasons",
    "provider",
    "location",
    "outcome",
    "status",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "error_code",
    "findings",
)


@dataclass(frozen=True)
class AuditPage:
    entries: list[dict[str, Any]]
    # Pass as ``before`` for the next (older) page; None when this is the last.
    next_before: int | None


class AuditReader:
    """Lists and verifies the audit log of one database."""

    def __init__(
        self, sessions: sessionmaker[Session], log: AuditLog, head_file: Path | None
    ) -> None:
        self._sessions = sessions
        self._log = log
        self._head_file = head_file

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The database the log is read from, for views of it (``enclave.mcp.clients``)."""
        return self._sessions

    def entries(
        self,
        *,
        workspace: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> AuditPage:
        """Entries newest first, at most ``limit``, with ``seq < before`` when given."""
        query = select(AuditEntryRow.seq, AuditEntryRow.payload)
        if workspace:
            query = query.where(AuditEntryRow.workspace == workspace)
        if outcome:
            query = query.where(AuditEntryRow.outcome == outcome)
        if since is not None:
            query = query.where(AuditEntryRow.time >= since)
        if before is not None:
            query = query.where(AuditEntryRow.seq < before)
        query = query.order_by(AuditEntryRow.seq.desc()).limit(limit + 1)
        with self._sessions() as session:
            rows = session.execute(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        entries = [_listed(seq, payload) for seq, payload in rows]
        return AuditPage(entries, rows[-1][0] if more and rows else None)

    def verify(self, flush_timeout: float = 10.0) -> VerifyResult:
        """Write out the entries still queued, then check the chain, the head and checkpoints."""
        late: tuple[str, ...] = ()
        try:
            self._log.flush(flush_timeout)
        except TimeoutError:
            late = ("entries were still being written; the newest are not checked yet",)
        result = self._log.verify()
        return replace(result, notes=result.notes + late) if late else result


def _listed(seq: int, payload: str) -> dict[str, Any]:
    try:
        entry = orjson.loads(payload)
    except orjson.JSONDecodeError:
        entry = None
    if not isinstance(entry, dict):  # only a tampered row; verification names it
        entry = {"outcome": "unreadable"}
    return {"seq": seq, **{name: entry.get(name) for name in LISTED_FIELDS}}
