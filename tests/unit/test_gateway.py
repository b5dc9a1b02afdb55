"""The gateway against three mock upstreams of different clearance.

``cloud`` is cleared for public data, ``sovereign`` for internal and
``onprem`` for confidential; nothing is cleared for secret. The mocks log
every request they receive, so each test can prove where data did NOT go.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from enclave.app import create_app
from enclave.gateway.audit import audit_head_path, verify_chain
from enclave.settings import Settings
from enclave.storage.db import open_database
from enclave.testing.mock_upstream import MockUpstream, running_mock_upstream
from tests.conftest import ADMIN_KEY

IBAN = "SE45 5000 0000 0583 9825 7466"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def mocks() -> Iterator[dict[str, MockUpstream]]:
    with (
        running_mock_upstream(chunks=5) as cloud,
        running_mock_upstream(chunks=5) as sovereign,
        running_mock_upstream(chunks=5) as onprem,
    ):
        yield {"cloud": cloud, "sovereign": sovereign, "onprem": onprem}


def gateway_settings(tmp_path: Path, mocks: dict[str, MockUpstream], **extra: Any) -> Settings:
    clearances = {"cloud": "public", "sovereign": "internal", "onprem": "confidential"}
    providers = [
        {
            "name": name,
            "type": "openai",
            "base_url": mocks[name].url,
            "clearance": clearance,
            "location": f"{name}-dc",
            "models": ["m"],
        }
        for name, clearance in clearances.items()
    ]
    config: dict[str, Any] = {
        "home": tmp_path / "home",
        "admin_key": ADMIN_KEY,
        "providers": providers,
        "aliases": {"best": ["cloud/m", "sovereign/m", "onprem/m"]},
        "default_model": "best",
        "workspaces": [{"name": "policy", "classification": "confidential"}],
        **extra,
    }
    return Settings.model_validate(config)


@pytest.fixture
def gateway(tmp_path: Path, mocks: dict[str, MockUpstream]) -> Iterator[TestClient]:
    for mock in mocks.values():
        mock.reset()
    app = create_app(gateway_settings(tmp_path, mocks))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def key_for(client: TestClient, workspace: str) -> dict[str, str]:
    created = client.post(
        "/api/keys", json={"name": workspace, "workspace": workspace}, headers=AUTH
    ).json()
    return {"Authorization": f"Bearer {created['key']}"}


def chat(client: TestClient, content: str, headers: dict[str, str] | None = None, **body: Any):
    payload = {"model": "best", "messages": [{"role": "user", "content": content}], **body}
    return client.post("/v1/chat/completions", json=payload, headers=headers or AUTH)


def hits(mocks: dict[str, MockUpstream]) -> dict[str, int]:
    return {name: len(mock.requests) for name, mock in mocks.items()}


def texts_seen(mock: MockUpstream) -> str:
    return json.dumps([request.body for request in mock.requests])


def test_public_data_takes_the_preferred_provider(gateway: TestClient, mocks: dict) -> None:
    response = chat(gateway, "What is the policy rate?")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith("tok0")
    assert response.headers["x-enclave-provider"] == "cloud"
    assert response.headers["x-enclave-model"] == "m"
    assert response.headers["x-enclave-classification"] == "public"
    assert float(response.headers["x-enclave-overhead-ms"]) >= 0
    assert hits(mocks) == {"cloud": 1, "sovereign": 0, "onprem": 0}
    assert "authorization" not in mocks["cloud"].requests[0].headers, "client keys stay here"


def test_the_workspace_floor_keeps_data_off_uncleared_providers(
    gateway: TestClient, mocks: dict
) -> None:
    headers = key_for(gateway, "policy")
    response = chat(gateway, "Draft the rate decision.", headers)
    assert response.headers["x-enclave-provider"] == "onprem"
    assert response.headers["x-enclave-classification"] == "confidential"
    assert hits(mocks) == {"cloud": 0, "sovereign": 0, "onprem": 1}


def test_the_header_raises_but_never_lowers(gateway: TestClient, mocks: dict) -> None:
    raised = chat(gateway, "hello", {**AUTH, "X-Enclave-Classification": "internal"})
    assert raised.headers["x-enclave-provider"] == "sovereign"
    headers = {**key_for(gateway, "policy"), "X-Enclave-Classification": "public"}
    lowered = chat(gateway, "hello", headers)
    assert lowered.headers["x-enclave-classification"] == "confidential"
    assert lowered.headers["x-enclave-provider"] == "onprem"
    assert hits(mocks)["cloud"] == 0
    bad = chat(gateway, "hello", {**AUTH, "X-Enclave-Classification": "top-secret"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_classification"


def test_detectors_classify_messages_and_tool_results(gateway: TestClient, mocks: dict) -> None:
    response = chat(gateway, f"Pay the invoice to {IBAN} today.")
    assert response.headers["x-enclave-classification"] == "confidential"
    assert response.headers["x-enclave-provider"] == "onprem"
    messages = [
        {"role": "user", "content": "Look up the customer."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"card": "4111 1111 1111 1111"}'},
    ]
    tooled = gateway.post(
        "/v1/chat/completions", json={"model": "best", "messages": messages}, headers=AUTH
    )
    assert tooled.headers["x-enclave-provider"] == "onprem"
    assert hits(mocks)["cloud"] == 0 and hits(mocks)["sovereign"] == 0
    assert IBAN not in texts_seen(mocks["cloud"])


def test_no_eligible_provider_is_a_403_and_nothing_is_sent(
    gateway: TestClient, mocks: dict
) -> None:
    response = chat(gateway, "x", {**AUTH, "X-Enclave-Classification": "secret"})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "policy_error"
    assert error["code"] == "no_eligible_provider"
    assert "'secret'" in error["message"] and "cleared only up to" in error["message"]
    assert response.headers["x-enclave-classification"] == "secret"
    assert response.headers["x-enclave-provider"] == "none"
    assert hits(mocks) == {"cloud": 0, "sovereign": 0, "onprem": 0}


def test_fallback_stays_among_eligible_providers(gateway: TestClient, mocks: dict) -> None:
    mocks["sovereign"].fail_status = 503
    response = chat(gateway, "hi", {**AUTH, "X-Enclave-Classification": "internal"})
    assert response.status_code == 200
    assert response.headers["x-enclave-provider"] == "onprem"
    assert hits(mocks) == {"cloud": 0, "sovereign": 1, "onprem": 1}

    mocks["onprem"].fail_status = 500
    headers = key_for(gateway, "policy")
    failed = chat(gateway, f"IBAN {IBAN}", headers)
    assert failed.status_code == 502
    assert failed.json()["error"]["code"] == "upstream_unavailable"
    assert hits(mocks)["cloud"] == 0 and hits(mocks)["sovereign"] == 1


def test_streams_fall_over_before_the_first_byte(gateway: TestClient, mocks: dict) -> None:
    mocks["sovereign"].die_before_headers = True
    headers = {**AUTH, "X-Enclave-Classification": "internal"}
    payload = {"model": "best", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with gateway.stream("POST", "/v1/chat/completions", json=payload, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["x-enclave-provider"] == "onprem"
        body = "".join(response.iter_text())
    assert body.rstrip().endswith("data: [DONE]")
    assert body.count("tok") == 5
    assert '"usage"' not in body, "usage was not asked for, so it is not passed on"
    assert hits(mocks)["cloud"] == 0


def test_an_upstream_dying_mid_stream_ends_with_an_error_event(
    gateway: TestClient, mocks: dict
) -> None:
    mocks["cloud"].die_after_chunks = 2
    payload = {"model": "cloud/m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with gateway.stream("POST", "/v1/chat/completions", json=payload, headers=AUTH) as response:
        body = "".join(response.iter_text())
    events = [line for line in body.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in body
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_disconnected"
    assert body.count("tok") == 2


def test_usage_totals_match_the_usage_returned(gateway: TestClient, mocks: dict) -> None:
    total = 0
    for index in range(3):
        body = chat(gateway, "one two three " * (index + 1)).json()
        total += body["usage"]["total_tokens"]
    payload = {
        "model": "best",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "four words right here"}],
    }
    with gateway.stream("POST", "/v1/chat/completions", json=payload, headers=AUTH) as response:
        body = "".join(response.iter_text())
    usage_events = [
        json.loads(line[6:])
        for line in body.splitlines()
        if '"usage"' in line and "[DONE]" not in line
    ]
    total += usage_events[-1]["usage"]["total_tokens"]
    gateway.app.state.services.gateway.usage.flush()  # type: ignore[attr-defined]
    report = gateway.get("/api/usage", headers=AUTH).json()["data"]
    assert sum(line["total_tokens"] for line in report) == total
    assert sum(line["requests"] for line in report) == 4
    assert {line["provider"] for line in report} == {"cloud"}


def test_key_limits_answer_429_at_the_configured_number(
    tmp_path: Path, mocks: dict[str, MockUpstream]
) -> None:
    settings = gateway_settings(tmp_path, mocks, key_limits={"requests_per_minute": 3})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        statuses = [chat(client, "hi").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = chat(client, "hi")
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limit_requests"


def test_every_call_is_audited_and_the_chain_verifies(gateway: TestClient, mocks: dict) -> None:
    chat(gateway, f"send to {IBAN}")
    chat(gateway, "x", {**AUTH, "X-Enclave-Classification": "secret"})
    services = gateway.app.state.services  # type: ignore[attr-defined]
    services.gateway.audit.flush()
    settings = services.settings
    _, sessions = open_database(settings.resolved_database_url)
    result = verify_chain(sessions, audit_head_path(settings))
    assert result.ok and result.entries == 2
    database = (settings.home / "enclave.db").read_bytes()
    wal = settings.home / "enclave.db-wal"
    stored = database + (wal.read_bytes() if wal.exists() else b"")
    assert IBAN.encode() not in stored and b"5000 0000 0583" not in stored


def test_workspace_token_budget_is_enforced_on_streams_too(
    tmp_path: Path, mocks: dict[str, MockUpstream]
) -> None:
    settings = gateway_settings(tmp_path, mocks)
    settings.workspaces[0].limits.token_budget = 10  # mock answers cost 5 + prompt words
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        headers = key_for(client, "policy")
        payload = {
            "model": "best",
            "stream": True,
            "messages": [{"role": "user", "content": "a b"}],
        }
        with client.stream("POST", "/v1/chat/completions", json=payload, headers=headers) as first:
            assert first.status_code == 200
            "".join(first.iter_text())
        second = chat(client, "a b", headers)
        assert second.status_code == 200  # 7 of 10 spent: still under the budget
        refused = chat(client, "a b", headers)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "token_budget_exhausted"
        assert chat(client, "a b").status_code == 200, "other workspaces are not limited"


def test_readiness_ignores_upstream_outages_and_providers_show_their_circuit(
    gateway: TestClient, mocks: dict
) -> None:
    mocks["cloud"].fail_status = 500
    for _ in range(3):
        chat(gateway, "hi", headers=AUTH, model="cloud/m")
    assert gateway.get("/readyz").status_code == 200
    providers = {p["name"]: p for p in gateway.get("/api/providers", headers=AUTH).json()}
    assert providers["cloud"]["circuit"] == "open"
    assert providers["onprem"]["clearance"] == "confidential"
    assert providers["onprem"]["location"] == "onprem-dc"
    refused = chat(gateway, "hi", headers=AUTH, model="cloud/m")
    assert refused.status_code == 403, "a provider with an open circuit is not up"
    posts = [request for request in mocks["cloud"].requests if request.method == "POST"]
    assert len(posts) == 3
