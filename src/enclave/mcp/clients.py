"""Who uses ``/mcp``: its clients by API key, with their calls, read from the audit log.

Every ``/mcp`` tool call and resource read is one audit entry whose endpoint
starts with ``/mcp`` (``enclave.api.mcp.server``), so the log already holds
what the admin page shows; nothing else is stored. Entries without a key are
refused requests (no key, a bad key): they are counted under ``key_id`` None.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from enclave.storage.models import ApiKeyRow, AuditEntryRow

MCP_PREFIX = "/mcp"
CALL_REASON = "mcp client"  # the reason of the one entry each /mcp call writes


@dataclass
class McpClient:
    """One key's use of ``/mcp``."""

    key_id: int | None
    key_name: str | None
    workspace: str
    clearance: str | None
    calls: int = 0
    denied: int = 0
    errors: int = 0
    last_call: datetime | None = None
    tools: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "key_name": self.key_name,
            "workspace": self.workspace,
            "clearance": self.clearance,
            "calls": self.calls,
            "denied": self.denied,
            "errors": self.errors,
            "last_call": self.last_call.isoformat() if self.last_call else None,
            "tools": dict(self.tools.most_common()),
        }


def mcp_clients(
    sessions: sessionmaker[Session], *, since: datetime | None = None, limit: int = 10000
) -> list[McpClient]:
    """``/mcp`` use per key, most recent first, over the newest ``limit`` entries."""
    # The endpoint lives in the hashed payload only; a substring narrows the scan.
    query = select(AuditEntryRow.payload).where(
        AuditEntryRow.payload.contains(f'"endpoint":"{MCP_PREFIX}')
    )
    if since is not None:
        query = query.where(AuditEntryRow.time >= since)
    with sessions() as session:
        payloads = session.scalars(query.order_by(AuditEntryRow.seq.desc()).limit(limit)).all()
        entries = [orjson.loads(payload) for payload in payloads]
        # One entry per call (reason CALL_REASON); refusal details are separate entries.
        entries = [
            e
            for e in entries
            if str(e.get("endpoint", "")).startswith(MCP_PREFIX)
            and list(e.get("reasons") or ()) == [CALL_REASON]
        ]
        ids = {e["key_id"] for e in entries if e.get("key_id") is not None}
        keys = {
            key.id: key
            for key in session.scalars(select(ApiKeyRow).where(ApiKeyRow.id.in_(ids))).all()
        }
    found: dict[int | None, McpClient] = {}
    for entry in entries:
        key_id = entry.get("key_id")
        key = keys.get(key_id) if key_id is not None else None
        client = found.get(key_id)
        if client is None:
            client = found[key_id] = McpClient(
                key_id,
                key.name if key else None,
                str(entry.get("workspace") or ""),
                key.receive_clearance if key else None,
            )
        time = datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00"))
        client.calls += 1
        client.denied += entry.get("outcome") == "denied"
        client.errors += entry.get("outcome") == "error"
        client.last_call = max(client.last_call or time, time)
        tool = str(entry["endpoint"]).removeprefix(MCP_PREFIX).strip()
        client.tools[tool or "(refused at sign-in)"] += 1
    return sorted(
        found.values(), key=lambda c: c.last_call or datetime.min.replace(tzinfo=UTC), reverse=True
    )
