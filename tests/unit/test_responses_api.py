"""``/v1/responses``: the Responses API over the chat path, checked with the openai SDK.

The openai client runs in process: ``TestClient`` is an ``httpx.Client``, so
the SDK's own parsing (``Response`` and the streaming event union) reads
every object and event the app sends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi.testclient import TestClient
from openai import NotFoundError, OpenAI
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from enclave.app import create_app
from enclave.providers.base import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    GenerationStream,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings
from enclave.testing.scripted import Script, ScriptedProvider
from enclave.wire.responses_api import ResponseEvents, ResponsesRequest, response_from_chat
from tests.conftest import ADMIN_KEY, ScriptedApp

EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


class _ToolCallStream(GenerationStream):
    def __init__(self, call: ToolCall) -> None:
        self.call = call

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[GenerationEvent]:
        yield ToolCallDelta(0, self.call)
        yield Finished("tool_calls", Usage(prompt_tokens=7, completion_tokens=3))

    async def aclose(self) -> None:
        pass


class ToolingProvider(ScriptedProvider):
    """The scripted model, except that it calls ``weather`` once when offered it."""

    async def generate(self, request: GenerationRequest) -> GenerationStream:
        answered = any(message.role == "tool" for message in request.messages)
        if request.tools and not answered and request.tool_choice != "none":
            self.requests.append(request)
            return _ToolCallStream(ToolCall("call_w1", "weather", '{"city": "Lund"}'))
        return await super().generate(request)


@pytest.fixture
def app(settings: Settings) -> Iterator[ScriptedApp]:
    provider = ToolingProvider()
    registry = ModelRegistry([provider], default_model="scripted")
    with TestClient(
        create_app(settings, registry=registry), raise_server_exceptions=False
    ) as client:
        yield ScriptedApp(client, provider, settings)


def sdk(app: ScriptedApp, key: str = ADMIN_KEY) -> OpenAI:
    return OpenAI(
        base_url="http://testserver/v1", api_key=key, http_client=app.client, max_retries=0
    )


def events_of(app: ScriptedApp, body: dict) -> list[ResponseStreamEvent]:
    response = app.client.post("/v1/responses", json={**body, "stream": True}, headers=app.auth())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.split("\n\n"):
        data = [line[5:].strip() for line in block.split("\n") if line.startswith("data:")]
        if data:
            events.append(EVENTS.validate_python(json.loads(data[0])))
    assert [event.sequence_number for event in events] == list(range(len(events)))
    return events


def test_a_string_input_is_answered_as_a_response(app: ScriptedApp) -> None:
    response = sdk(app).responses.create(
        model="scripted", input="Hi there", instructions="Be brief.", max_output_tokens=50
    )
    assert isinstance(response, Response)
    assert response.status == "completed" and response.model == "scripted"
    assert response.output_text == "Hello from the script."
    assert response.usage is not None and response.usage.output_tokens == 5
    sent = app.provider.requests[-1]
    assert [(m.role, m.content) for m in sent.messages] == [
        ("system", "Be brief."),
        ("user", "Hi there"),
    ]
    assert sent.sampling.max_tokens == 50
    app.client.app.state.services.gateway.audit.flush(timeout=5)  # type: ignore[attr-defined]
    entries = app.client.get("/api/admin/audit", headers=app.auth()).json()["data"]
    assert entries[0]["endpoint"] == "/v1/responses" and entries[0]["status"] == 200


def test_items_become_the_chat_messages(app: ScriptedApp) -> None:
    sdk(app).responses.create(
        model="scripted",
        temperature=0.2,
        top_p=0.9,
        input=[
            {"role": "developer", "content": "Rules."},
            {"role": "user", "content": [{"type": "input_text", "text": "one"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "two", "annotations": []}],
            },
            {"type": "message", "role": "user", "content": "three"},
        ],
    )
    sent = app.provider.requests[-1]
    assert [(m.role, m.content) for m in sent.messages] == [
        ("system", "Rules."),
        ("user", "one"),
        ("assistant", "two"),
        ("user", "three"),
    ]
    assert sent.sampling.temperature == 0.2 and sent.sampling.top_p == 0.9


WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": True,
}


def test_a_function_call_round_trip_with_previous_response_id(app: ScriptedApp) -> None:
    client = sdk(app)
    first = client.responses.create(model="scripted", input="Weather in Lund?", tools=[WEATHER])
    [call] = first.output
    assert call.type == "function_call"
    assert (call.name, call.arguments, call.call_id) == ("weather", '{"city": "Lund"}', "call_w1")
    tools = app.provider.requests[-1].tools
    assert tools[0].name == "weather" and tools[0].parameters == WEATHER["parameters"]

    second = client.responses.create(
        model="scripted",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text == "Hello from the script."
    assert second.previous_response_id == first.id
    sent = app.provider.requests[-1].messages
    assert [m.role for m in sent] == ["user", "assistant", "tool"]
    assert sent[1].tool_calls[0].name == "weather" and sent[1].tool_calls[0].id == "call_w1"
    assert (sent[2].tool_call_id, sent[2].content) == ("call_w1", "Sunny")
    assert client.responses.retrieve(second.id).id == second.id


def test_function_call_items_in_input_round_trip_without_storage(app: ScriptedApp) -> None:
    sdk(app).responses.create(
        model="scripted",
        store=False,
        input=[
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "Rain"},
        ],
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "weather"},
    )
    sent = app.provider.requests[-1]
    assert [m.role for m in sent.messages] == ["user", "assistant", "tool"]
    assert sent.tool_choice == "weather"


def test_store_false_is_not_kept(app: ScriptedApp) -> None:
    client = sdk(app)
    response = client.responses.create(model="scripted", input="Hi", store=False)
    with pytest.raises(NotFoundError):
        client.responses.retrieve(response.id)
    refused = app.client.post(
        "/v1/responses",
        json={"model": "scripted", "input": "more", "previous_response_id": response.id},
        headers=app.auth(),
    )
    assert refused.status_code == 404


def test_json_schema_text_format_becomes_response_format(app: ScriptedApp) -> None:
    app.provider.script = Script(respond=lambda request: '{"city": "Lund"}')
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    response = sdk(app).responses.create(
        model="scripted",
        input="Where?",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
    )
    assert json.loads(response.output_text) == {"city": "Lund"}
    sent = app.provider.requests[-1].response_format
    assert (sent.kind, sent.name, sent.schema) == ("json_schema", "place", schema)
    assert response.text is not None and response.text.format.type == "json_schema"


def test_streamed_events_parse_as_the_sdk_types(app: ScriptedApp) -> None:
    events = events_of(app, {"model": "scripted", "input": "Hi"})
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds.count("response.output_text.delta") == 5
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == "Hello from the script."
    assert done.response.usage is not None and done.response.usage.output_tokens == 5


def test_the_sdk_stream_helper_accumulates_text_and_function_calls(app: ScriptedApp) -> None:
    client = sdk(app)
    with client.responses.stream(model="scripted", input="Hi") as stream:
        text = "".join(
            event.delta for event in stream if event.type == "response.output_text.delta"
        )
        final = stream.get_final_response()
    assert text == final.output_text == "Hello from the script."

    with client.responses.stream(model="scripted", input="Weather?", tools=[WEATHER]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    assert final.output[0].type == "function_call"
    assert final.output[0].arguments == '{"city": "Lund"}'
    # A streamed response is stored too, and continues.
    follow = client.responses.create(
        model="scripted",
        previous_response_id=final.id,
        input=[{"type": "function_call_output", "call_id": "call_w1", "output": "Sunny"}],
    )
    assert follow.output_text == "Hello from the script."


def test_a_failure_mid_stream_is_response_failed(app: ScriptedApp) -> None:
    app.provider.script = Script(fail_after=2)
    events = events_of(app, {"model": "scripted", "input": "Hi"})
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error is not None
    assert "response.completed" not in [event.type for event in events]


def test_responses_are_private_to_the_key_that_stored_them(app: ScriptedApp) -> None:
    keys = app.client.app.state.services.keys  # type: ignore[attr-defined]
    other_key, _ = keys.create("other")
    elsewhere, _ = keys.create("elsewhere", workspace="other-team")
    response = sdk(app).responses.create(model="scripted", input="Mine")
    other = sdk(app, str(other_key))
    with pytest.raises(NotFoundError):
        other.responses.retrieve(response.id)
    with pytest.raises(NotFoundError):
        other.responses.create(model="scripted", input="x", previous_response_id=response.id)
    with pytest.raises(NotFoundError):
        sdk(app, str(elsewhere)).responses.retrieve(response.id)
    assert sdk(app).responses.retrieve(response.id).output_text == response.output_text


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"input": "x", "tools": [{"type": "web_search"}]}, "web_search"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input_image"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "item_reference"),
        ({"input": "x", "tool_choice": {"type": "allowed_tools"}}, "allowed_tools"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "previous_response_id": "resp_nope"}, "resp_nope"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({}, "input"),
    ],
)
def test_unsupported_requests_are_refused_with_openai_errors(
    app: ScriptedApp, body: dict, words: str
) -> None:
    response = app.client.post(
        "/v1/responses", json={"model": "scripted", **body}, headers=app.auth()
    )
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert words in error["message"] or words == error.get("param"), error


def test_an_unknown_model_is_a_404_and_no_key_a_401(app: ScriptedApp) -> None:
    body = {"model": "nope", "input": "x"}
    assert app.client.post("/v1/responses", json=body, headers=app.auth()).status_code == 404
    assert app.client.post("/v1/responses", json=body).status_code == 401


CITATION = {
    "number": 1,
    "document": {"id": 42, "name": "policy.pdf"},
    "title": "Travel policy",
    "quote": "Trains are preferred.",
}


def chat_events(*chunks: dict) -> list[bytes]:
    return [b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks] + [
        b"data: [DONE]\n\n"
    ]


def test_knowledge_citations_become_file_citation_annotations() -> None:
    request = ResponsesRequest.model_validate({"model": "m", "input": "How do I travel?"})
    chat = {
        "created": 1,
        "choices": [
            {"message": {"role": "assistant", "content": "By train [1]."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        "citations": [CITATION],
    }
    response = Response.model_validate(response_from_chat(request, chat))
    [part] = response.output[0].content  # type: ignore[union-attr]
    assert part.type == "output_text"
    [note] = part.annotations
    assert note.type == "file_citation"
    assert (note.file_id, note.filename, note.index) == ("42", "policy.pdf", 9)

    events = ResponseEvents(request)
    out = events.start()
    for data in chat_events(
        {"choices": [{"index": 0, "delta": {"content": "By train [1]."}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "citations": [CITATION]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    ):
        out += events.feed(data)
    parsed = [EVENTS.validate_python(json.loads(block.split(b"data: ", 1)[1])) for block in out]
    kinds = [event.type for event in parsed]
    assert "response.output_text.annotation.added" in kinds
    final = parsed[-1]
    assert final.type == "response.completed"
    assert final.response.output[0].content[0].annotations[0].file_id == "42"  # type: ignore[union-attr]
    assert final.response.usage is not None and final.response.usage.total_tokens == 7


def test_a_cut_off_answer_is_incomplete() -> None:
    request = ResponsesRequest.model_validate({"model": "m", "input": "x", "max_output_tokens": 2})
    chat = {"choices": [{"message": {"content": "a b"}, "finish_reason": "length"}]}
    response = Response.model_validate(response_from_chat(request, chat))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
