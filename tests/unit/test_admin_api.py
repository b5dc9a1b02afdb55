"""/api/admin: workspaces, the audit log's pages and filters, and chain verification."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from enclave.app import create_app
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings
from enclave.testing.scripted import ScriptedProvider
from tests.conftest import ADMIN_KEY

ADMIN_PATHS = [
    ("GET", "/api/admin/workspaces"),
    ("GET", "/api/admin/audit"),
    ("POST", "/api/admin/audit/verify"),
]


def auth(key: str = ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path / "home",
        admin_key=ADMIN_KEY,
        workspaces=[{"name": "default"}, {"name": "legal", "classification": "confidential"}],
    )
    app = create_app(settings, registry=ModelRegistry([ScriptedProvider()], "scripted"))
    with TestClient(app) as client:
        yield client


def new_key(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/api/keys", json={"name": "k", **body}, headers=auth())
    assert response.status_code == 201, response.text
    return dict(response.json())


def chat(client: TestClient, key: str = ADMIN_KEY, model: str = "scripted") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return client.post("/v1/chat/completions", json=body, headers=auth(key)).status_code


def audit(client: TestClient, **query: Any) -> dict[str, Any]:
    response = client.get("/api/admin/audit", params=query, headers=auth())
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_admin_routes_refuse_ordinary_keys_and_sessions(client: TestClient) -> None:
    user = new_key(client)
    for method, path in ADMIN_PATHS:
        response = client.request(method, path, headers=auth(user["key"]))
        assert response.status_code == 403, (method, path)
        assert response.json()["error"]["code"] == "permission_denied"
    client.post("/ui/login", data={"api_key": user["key"]}, follow_redirects=False)
    assert client.get("/api/admin/audit").status_code == 403


def test_workspaces_list_their_class_and_active_keys(client: TestClient) -> None:
    new_key(client, workspace="legal")
    revoked = new_key(client, workspace="legal")
    client.delete(f"/api/keys/{revoked['id']}", headers=auth())
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    new_key(client, workspace="legal", expires_at=past)
    new_key(client, workspace="sales")
    response = client.get("/api/admin/workspaces", headers=auth())
    assert response.status_code == 200
    rows = {row["name"]: row for row in response.json()["data"]}
    assert rows["default"] == {"name": "default", "classification": "public", "keys": 1}
    assert rows["legal"] == {"name": "legal", "classification": "confidential", "keys": 1}
    assert rows["sales"]["keys"] == 1


def test_audit_entries_are_newest_first_and_filter(client: TestClient) -> None:
    legal = new_key(client, workspace="legal")
    assert chat(client) == 200
    assert chat(client, legal["key"]) == 200
    assert chat(client, model="no-such-model") == 404
    client.app.state.services.gateway.audit.flush(timeout=5)  # type: ignore[attr-defined]

    page = audit(client)
    entries = page["data"]
    assert [e["seq"] for e in entries] == [3, 2, 1]
    assert page["next_before"] is None
    newest = entries[0]
    assert newest["outcome"] == "error" and newest["error_code"] == "model_not_found"
    assert newest["requested_model"] == "no-such-model"
    assert "prompt_text" not in newest and "response_text" not in newest
    middle = entries[1]
    assert (middle["workspace"], middle["key_id"]) == ("legal", legal["id"])
    assert middle["classification"] == "confidential"
    assert middle["endpoint"] == "/v1/chat/completions" and middle["provider"] == "scripted"
    assert middle["status"] == 200 and middle["completion_tokens"] == 5
    assert isinstance(middle["latency_ms"], float)

    assert [e["seq"] for e in audit(client, workspace="legal")["data"]] == [2]
    assert [e["seq"] for e in audit(client, outcome="error")["data"]] == [3]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert audit(client, since=future)["data"] == []
    assert len(audit(client, since="2000-01-01")["data"]) == 3

    first = audit(client, limit=2)
    assert [e["seq"] for e in first["data"]] == [3, 2]
    assert first["next_before"] == 2
    rest = audit(client, limit=2, before=first["next_before"])
    assert [e["seq"] for e in rest["data"]] == [1] and rest["next_before"] is None

    bad = client.get("/api/admin/audit", params={"limit": 0}, headers=auth())
    assert bad.status_code == 400


def test_verify_flushes_then_checks_the_chain(client: TestClient) -> None:
    for _ in range(3):
        assert chat(client) == 200
    # No flush here: verification writes out what is still queued first.
    result = client.post("/api/admin/audit/verify", headers=auth()).json()
    assert result["ok"] is True and result["entries"] == 3
    assert result["first_bad"] is None and len(result["head_hash"]) == 64
    assert set(result) == {
        *("ok", "entries", "first_bad", "reason", "head_hash", "notes"),
        *("checkpoints", "key_ids"),  # the signed head and checkpoints checked, and their keys
    }
    assert result["checkpoints"] >= 2 and len(result["key_ids"]) == 1

    engine = client.app.state.engine  # type: ignore[attr-defined]
    with engine.begin() as connection:
        payload = connection.execute(text("SELECT payload FROM audit_log WHERE seq = 2")).scalar()
        edited = json.loads(payload) | {"requested_model": "something-else"}
        connection.execute(
            text("UPDATE audit_log SET payload = :p WHERE seq = 2"), {"p": json.dumps(edited)}
        )
    broken = client.post("/api/admin/audit/verify", headers=auth()).json()
    assert broken["ok"] is False and broken["first_bad"] == 2
    assert "edited" in broken["reason"]
