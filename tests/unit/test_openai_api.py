"""The /v1 wire format and error statuses, against the scripted provider."""

from __future__ import annotations

import json

from enclave.errors import ProviderError
from enclave.testing.scripted import Script
from tests.conftest import ScriptedApp

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}


def sse_events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]


def test_chat_completion_shape(scripted: ScriptedApp) -> None:
    response = scripted.client.post("/v1/chat/completions", json=CHAT, headers=scripted.auth())
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello from the script.",
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}


def test_content_parts_and_roles_reach_the_provider(scripted: ScriptedApp) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    response = scripted.client.post(
        "/v1/chat/completions", json={**CHAT, "messages": messages}, headers=scripted.auth()
    )
    assert response.status_code == 200
    sent = scripted.provider.requests[-1].messages
    assert [m.role for m in sent] == ["system", "user", "assistant", "tool"]
    assert sent[1].content == "Hello"
    assert sent[2].tool_calls[0].name == "f"
    assert sent[3].tool_call_id == "c1"


def test_stream_format_with_usage(scripted: ScriptedApp) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = scripted.client.post("/v1/chat/completions", json=body, headers=scripted.auth())
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello from the script."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


def test_provider_dying_mid_stream_ends_with_an_error_event(scripted: ScriptedApp) -> None:
    scripted.provider.script = Script(fail_after=2, error=ProviderError("upstream went away"))
    response = scripted.client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers=scripted.auth()
    )
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["message"] == "upstream went away" and error["type"] == "provider_error"


def test_unexpected_failure_is_a_500_without_traceback(scripted: ScriptedApp) -> None:
    scripted.provider.script = Script(fail_after=0, error=RuntimeError("secret internals /etc/x"))
    response = scripted.client.post("/v1/chat/completions", json=CHAT, headers=scripted.auth())
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert "secret internals" not in response.text and "Traceback" not in response.text


def test_error_statuses(scripted: ScriptedApp) -> None:
    post = scripted.client.post
    auth = scripted.auth()
    cases = [
        (post("/v1/chat/completions", json={**CHAT, "n": 2}, headers=auth), 400, "n"),
        (
            post("/v1/chat/completions", json={**CHAT, "temperature": 9}, headers=auth),
            400,
            "temperature",
        ),
        (post("/v1/chat/completions", json={"model": "scripted"}, headers=auth), 400, "messages"),
        (post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=auth), 404, "model"),
        (post("/v1/chat/completions", json=CHAT), 401, None),
    ]
    for response, status, param in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param
    malformed = post(
        "/v1/chat/completions",
        content=b'{"model": ',
        headers={**auth, "content-type": "application/json"},
    )
    assert malformed.status_code == 400
    assert "not valid JSON" in malformed.json()["error"]["message"]


def test_body_over_the_limit_is_a_413(scripted: ScriptedApp) -> None:
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * 100_000}]}
    response = scripted.client.post("/v1/chat/completions", json=huge, headers=scripted.auth())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_full_queue_is_a_429_with_retry_after(scripted: ScriptedApp) -> None:
    scripted.provider.capacity = 0
    response = scripted.client.post("/v1/chat/completions", json=CHAT, headers=scripted.auth())
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_platform_errors_use_the_platform_shape(scripted: ScriptedApp) -> None:
    response = scripted.client.delete("/api/keys/999", headers=scripted.auth())
    assert response.status_code == 404
    assert response.json() == {
        "error": {"status": 404, "code": "not_found", "message": "No API key with id 999."}
    }


def test_models_and_default_alias(scripted: ScriptedApp) -> None:
    listed = scripted.client.get("/v1/models", headers=scripted.auth()).json()
    assert {m["id"] for m in listed["data"]} == {"scripted", "scripted-embed", "scripted-words"}
    one = scripted.client.get("/v1/models/scripted/scripted", headers=scripted.auth()).json()
    assert one["id"] == "scripted" and one["owned_by"] == "scripted"
    response = scripted.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "default"}, headers=scripted.auth()
    )
    assert response.json()["model"] == "scripted"


def test_completions_with_a_list_prompt(scripted: ScriptedApp) -> None:
    body = {"model": "scripted", "prompt": ["a", "b"], "echo": True}
    response = scripted.client.post("/v1/completions", json=body, headers=scripted.auth())
    choices = response.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert choices[1]["text"] == "bHello from the script."


def test_embeddings_encodings(scripted: ScriptedApp) -> None:
    body = {"model": "scripted-embed", "input": ["ab", "abcd"]}
    floats = scripted.client.post("/v1/embeddings", json=body, headers=scripted.auth()).json()
    assert floats["data"][1]["embedding"] == [4.0, 1.0, 0.0]
    encoded = scripted.client.post(
        "/v1/embeddings", json={**body, "encoding_format": "base64"}, headers=scripted.auth()
    ).json()
    assert isinstance(encoded["data"][0]["embedding"], str)
    wrong = scripted.client.post(
        "/v1/embeddings", json={**body, "model": "scripted"}, headers=scripted.auth()
    )
    assert wrong.status_code == 400


def test_metrics_count_requests_by_route_and_model(scripted: ScriptedApp) -> None:
    scripted.client.post("/v1/chat/completions", json=CHAT, headers=scripted.auth())
    text = scripted.client.get("/metrics", headers=scripted.auth()).text
    assert 'route="/v1/chat/completions"' in text and 'model="scripted"' in text
    assert 'enclave_tokens_total{direction="out",model="scripted"} 5.0' in text
    assert "enclave_time_to_first_token_seconds_bucket" in text


def test_unsupported_tool_choice_forms_get_a_readable_400(scripted: ScriptedApp) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    for choice in (
        {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}},
        "sometimes",
        {"type": "function", "function": {}},
    ):
        response = scripted.client.post(
            "/v1/chat/completions",
            json={**CHAT, "tools": tools, "tool_choice": choice},
            headers=scripted.auth(),
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "tool_choice"
        assert "literal[" not in error["message"] and "NamedToolChoice" not in error["message"]
        assert "'auto'" in error["message"], error["message"]
    allowed = scripted.client.post(
        "/v1/chat/completions",
        json={**CHAT, "tools": tools, "tool_choice": {"type": "allowed_tools"}},
        headers=scripted.auth(),
    ).json()["error"]["message"]
    assert "allowed_tools" in allowed


def test_union_members_never_show_in_an_error_location(scripted: ScriptedApp) -> None:
    response = scripted.client.post(
        "/v1/embeddings", json={"model": "scripted-embed", "input": 5}, headers=scripted.auth()
    )
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("Invalid parameter 'input':"), message
    assert "list[" not in message and "input.str" not in message
