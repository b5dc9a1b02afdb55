"""Bounded work for every input: each bad input gets a clear 4xx, and the next
normal request still succeeds.

The app runs with the scripted provider and a 16 MB body limit, so the bad
inputs reach the checks instead of the body limit.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from enclave.api.openai.routes import _unless_disconnected
from enclave.input_limits import INT64_MAX, check_document, json_too_deep
from enclave.settings import InputLimitsConfig, Settings
from enclave.testing.scripted import Script
from tests.conftest import ADMIN_KEY, ScriptedApp

TOO_BIG = INT64_MAX + 1  # 2**63: SQLite's integers stop one below


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    configured = Settings(
        home=tmp_path / "home", admin_key=ADMIN_KEY, max_body_bytes=16 * 1024 * 1024
    )
    configured.knowledge.embedding_model = "scripted-words"
    return configured


def error_of(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def chat(app: ScriptedApp, **fields: Any) -> Any:
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], **fields}
    return app.client.post("/v1/chat/completions", json=body, headers=app.auth())


def assert_still_serves(app: ScriptedApp) -> None:
    answer = chat(app)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Hello from the script."


# -- integers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", f"/api/conversations/{TOO_BIG}", None),
        ("PATCH", f"/api/conversations/{TOO_BIG}", {"title": "x"}),
        ("DELETE", f"/api/conversations/{TOO_BIG}", None),
        ("POST", f"/api/conversations/{TOO_BIG}/messages", {"model": "scripted", "content": "x"}),
        ("DELETE", f"/api/keys/{TOO_BIG}", None),
        ("GET", f"/api/usage?key_id={TOO_BIG}", None),
        ("GET", f"/api/admin/audit?before={TOO_BIG}", None),
        ("GET", f"/api/knowledge/kb/documents/{TOO_BIG}", None),
        ("DELETE", f"/api/knowledge/kb/documents/{TOO_BIG}", None),
        ("GET", f"/api/knowledge/kb/documents/1/chunks?offset={TOO_BIG}", None),
        ("GET", f"/api/apps/some-app?version={TOO_BIG}", None),
        ("POST", "/api/apps/some-app/rollback", {"to": TOO_BIG}),
    ],
)
def test_integers_beyond_64_bits_are_a_400(
    scripted: ScriptedApp, method: str, path: str, body: dict[str, Any] | None
) -> None:
    answer = scripted.client.request(method, path, json=body, headers=scripted.auth())
    assert answer.status_code == 400, answer.text
    assert "less than or equal to 9223372036854775807" in error_of(answer)["message"]
    assert scripted.client.get("/api/conversations", headers=scripted.auth()).status_code == 200


def test_a_seed_beyond_64_bits_is_a_400(scripted: ScriptedApp) -> None:
    answer = chat(scripted, seed=TOO_BIG)
    assert answer.status_code == 400
    assert error_of(answer)["param"] == "seed"
    assert_still_serves(scripted)


# -- nesting --------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_a_deeply_nested_body_is_a_400_before_parsing(scripted: ScriptedApp) -> None:
    body = '{"model": "scripted", "messages": [], "metadata": ' + nested(100_000) + "}"
    answer = scripted.client.post(
        "/v1/chat/completions",
        content=body,
        headers={**scripted.auth(), "content-type": "application/json"},
    )
    assert answer.status_code == 400
    assert "deeper than 64 levels" in error_of(answer)["message"]
    assert error_of(answer)["type"] == "invalid_request_error"  # the OpenAI shape on /v1
    platform = scripted.client.post(
        "/api/conversations",
        content='{"title": ' + nested(5000) + "}",
        headers={**scripted.auth(), "content-type": "application/json"},
    )
    assert platform.status_code == 400
    assert "max_json_depth" in error_of(platform)["message"]
    assert_still_serves(scripted)


def test_deep_tool_call_arguments_are_a_400(scripted: ScriptedApp) -> None:
    arguments = '{"a": ' + nested(100_000) + "}"
    messages = [
        {"role": "user", "content": "call it"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]
    answer = chat(scripted, messages=messages)
    assert answer.status_code == 400, answer.text
    assert error_of(answer)["param"] == "messages"
    assert "deeper than" in error_of(answer)["message"]
    assert_still_serves(scripted)


def test_deep_upload_metadata_is_a_400(scripted: ScriptedApp) -> None:
    created = scripted.client.post("/api/knowledge", json={"name": "kb"}, headers=scripted.auth())
    assert created.status_code == 201, created.text
    answer = scripted.client.post(
        "/api/knowledge/kb/documents",
        files={"file": ("a.txt", b"some text", "text/plain")},
        data={"metadata": '{"a": ' + nested(100_000) + "}"},
        headers=scripted.auth(),
    )
    assert answer.status_code == 400, answer.text
    assert error_of(answer)["param"] == "metadata"
    fine = scripted.client.post(
        "/api/knowledge/kb/documents",
        files={"file": ("a.txt", b"some text", "text/plain")},
        data={"metadata": '{"team": "hr"}'},
        headers=scripted.auth(),
    )
    assert fine.status_code == 202, fine.text


def test_the_depth_scan_ignores_brackets_in_strings() -> None:
    assert not json_too_deep(json.dumps({"text": "[" * 10_000}), 4)
    assert not json_too_deep(b'["\\"[[[[", [1]]', 2)
    assert json_too_deep(b'["\\\\", [[1]]]', 2)
    started = time.perf_counter()
    assert json_too_deep(b"[" * 8_000_000, 64)
    assert not json_too_deep(b'{"a": "' + b"[{" * 4_000_000 + b'"}', 64)
    assert time.perf_counter() - started < 1.0


# -- names, titles, prompts -----------------------------------------------------


def test_a_huge_model_name_is_a_400_and_never_echoed_or_audited(scripted: ScriptedApp) -> None:
    name = "m" * (5 * 1024 * 1024)
    answer = chat(scripted, model=name)
    assert answer.status_code == 400
    assert len(answer.content) < 1000
    assert "max_model_name_chars" in error_of(answer)["message"]
    embeddings = scripted.client.post(
        "/v1/embeddings", json={"model": name, "input": "x"}, headers=scripted.auth()
    )
    assert embeddings.status_code == 400 and len(embeddings.content) < 1000
    audit = scripted.client.get("/api/admin/audit", headers=scripted.auth())
    assert name[:1000] not in audit.text
    assert_still_serves(scripted)


def test_an_unknown_model_is_quoted_back_shortened(scripted: ScriptedApp) -> None:
    answer = chat(scripted, model="n" * 250)
    assert answer.status_code == 404
    message = error_of(answer)["message"]
    assert "n" * 81 not in message and "(250 characters)" in message


def test_nul_characters_are_refused_in_titles_and_key_names(scripted: ScriptedApp) -> None:
    auth = scripted.auth()
    title = scripted.client.post("/api/conversations", json={"title": "a\x00b"}, headers=auth)
    assert title.status_code == 400
    assert "NUL" in error_of(title)["message"]
    key = scripted.client.post("/api/keys", json={"name": "ops\x00"}, headers=auth)
    assert key.status_code == 400
    assert error_of(key)["param"] == "name"
    assert scripted.client.post("/api/keys", json={"name": "ops"}, headers=auth).status_code == 201
    created = scripted.client.post("/api/conversations", json={"title": "fine"}, headers=auth)
    assert created.status_code == 201


def app_spec(system_prompt: str) -> dict[str, Any]:
    return {
        "apiVersion": "enclave/v1",
        "kind": "App",
        "metadata": {"name": "helper"},
        "spec": {"model": "scripted", "system_prompt": system_prompt},
    }


def test_an_oversized_app_prompt_is_a_400(scripted: ScriptedApp) -> None:
    huge = scripted.client.put(
        "/api/apps/helper", json={"spec": app_spec("p" * 8_000_000)}, headers=scripted.auth()
    )
    assert huge.status_code == 400, huge.text[:500]
    assert "max_prompt_chars" in error_of(huge)["message"]
    assert error_of(huge)["param"] == "spec.spec.system_prompt"
    nul = scripted.client.put(
        "/api/apps/helper", json={"spec": app_spec("a\x00b")}, headers=scripted.auth()
    )
    assert nul.status_code == 400
    assert_still_serves(scripted)


def test_check_document_walks_every_string() -> None:
    limits = InputLimitsConfig()
    check_document({"a": [{"description": "fine"}]}, limits, "spec")
    with pytest.raises(Exception, match="NUL"):
        check_document({"a": [{"x": ["ok", "b\x00"]}]}, limits, "spec")


# -- embeddings -----------------------------------------------------------------


def test_too_many_embedding_characters_are_a_400(scripted: ScriptedApp) -> None:
    inputs = ["word " * 160_000] * 3  # 2.4 M characters, over the default 2 M
    answer = scripted.client.post(
        "/v1/embeddings",
        json={"model": "scripted-words", "input": inputs},
        headers=scripted.auth(),
    )
    assert answer.status_code == 400
    assert error_of(answer)["code"] == "embedding_request_too_large"
    assert "input_limits.max_embedding_chars" in error_of(answer)["message"]
    fine = scripted.client.post(
        "/v1/embeddings",
        json={"model": "scripted-words", "input": "hello"},
        headers=scripted.auth(),
    )
    assert fine.status_code == 200


# -- redirects ------------------------------------------------------------------


def test_the_slash_redirect_ignores_the_host_header(scripted: ScriptedApp) -> None:
    answer = scripted.client.get(
        "/api/keys/",
        headers={**scripted.auth(), "host": "evil.example"},
        follow_redirects=False,
    )
    assert answer.status_code == 307
    assert answer.headers["location"] == "/api/keys"
    sneaky = scripted.client.get("//evil.example/", follow_redirects=False)
    assert "evil.example" not in sneaky.headers.get("location", "")


def test_the_slash_redirect_uses_the_public_url(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from enclave.app import create_app
    from enclave.providers.registry import ModelRegistry
    from enclave.testing.scripted import ScriptedProvider

    configured = Settings(
        home=tmp_path / "home", admin_key=ADMIN_KEY, public_url="https://ai.example.com/"
    )
    app = create_app(configured, registry=ModelRegistry([ScriptedProvider()], "scripted"))
    with TestClient(app) as client:
        answer = client.get(
            "/api/keys/?workspace=default",
            headers={"host": "evil.example", "Authorization": f"Bearer {ADMIN_KEY}"},
            follow_redirects=False,
        )
    assert answer.status_code == 307
    assert answer.headers["location"] == "https://ai.example.com/api/keys?workspace=default"


# -- disconnects ----------------------------------------------------------------


def test_work_is_cancelled_when_the_client_disconnects() -> None:
    async def scenario() -> tuple[Any, bool]:
        cancelled = False

        async def work() -> Any:
            nonlocal cancelled
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled = True
                raise

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}

        result = await asyncio.wait_for(_unless_disconnected(work(), receive), 5)
        return result, cancelled

    result, cancelled = asyncio.run(scenario())
    assert result is None and cancelled


def test_a_chat_stops_generating_when_its_client_leaves(scripted: ScriptedApp) -> None:
    scripted.provider.script = Script(words=["w "] * 200, delay=0.02)  # 4 s if it ran out
    app = scripted.client.app
    body = json.dumps(
        {"model": "scripted", "messages": [{"role": "user", "content": "talk"}]}
    ).encode()
    sent: list[dict[str, Any]] = []

    async def run() -> float:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.sleep(0.2)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"authorization", f"Bearer {ADMIN_KEY}".encode()),
                (b"content-type", b"application/json"),
                (b"host", b"testserver"),
            ],
            "client": ("127.0.0.1", 1234),
            "server": ("testserver", 80),
        }
        started = time.perf_counter()
        await app(scope, receive, send)  # type: ignore[arg-type]
        for _ in range(50):  # the generation unwinds on the loop
            if scripted.provider.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        return time.perf_counter() - started

    took = scripted.client.portal.call(run)  # type: ignore[union-attr]
    assert took < 2.0
    assert scripted.provider.in_flight == 0
    assert not sent  # nobody to answer
    assert_still_serves_after_script_reset(scripted)


def assert_still_serves_after_script_reset(app: ScriptedApp) -> None:
    app.provider.script = Script()
    assert_still_serves(app)
