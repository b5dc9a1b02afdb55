"""The official `openai` Python SDK: chat, stream, tools, structured output,
embeddings, and completions with a suffix (fill-in-the-middle)."""

from __future__ import annotations

import json

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.clients.conftest import EMBEDDER, MODEL
from tests.clients.models import City
from tests.e2e.conftest import Server

pytestmark = pytest.mark.model

ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_chat_and_stream(server: Server) -> None:
    client = server.client()
    reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=16)
    assert reply.choices[0].message.content
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=16, stream=True)
    )
    assert len(chunks) > 1 and any(c.choices and c.choices[0].delta.content for c in chunks)


def test_a_forced_tool_is_called(server: Server) -> None:
    reply = server.client().chat.completions.create(  # type: ignore[call-overload]
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=256,
        temperature=0,
    )
    calls = reply.choices[0].message.tool_calls or []
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)


def test_structured_output_parses(server: Server) -> None:
    parsed = server.client().chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City,
        max_tokens=256,
        temperature=0,
    )
    assert isinstance(parsed.choices[0].message.parsed, City)


def test_embeddings(server: Server) -> None:
    result = server.client().embeddings.create(model=EMBEDDER, input=["a cat", "a dog"])
    assert [len(item.embedding) for item in result.data] == [384, 384]


def test_a_suffix_on_a_model_without_fim_tokens_is_a_clear_400(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        server.client().completions.create(
            model=MODEL, prompt="def add(a, b):\n    return ", suffix="\n", max_tokens=8
        )
    assert refused.value.status_code == 400
    message = str(refused.value)
    assert MODEL in message and "fill-in-the-middle" in message


def test_a_grounded_answer_reads_as_the_docs_say(server: Server) -> None:
    """docs/knowledge.md "Reading them from common clients": the SDK parses the
    message's annotations, and the citations are in ``model_extra``."""
    import time

    with server.http() as http:
        assert http.post("/api/knowledge", json={"name": "sdk-leave"}).status_code == 201
        added = http.post(
            "/api/knowledge/sdk-leave/documents",
            files={
                "file": ("leave.md", b"# Leave\n\nEmployees receive 480 days of parental leave.\n")
            },
        )
        document = added.json()["data"][0]["document"]["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = http.get(f"/api/knowledge/sdk-leave/documents/{document}").json()["status"]
            if status in ("indexed", "failed"):
                break
            time.sleep(0.1)
        assert status == "indexed"
    answer = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "How many days of parental leave do employees get?"}],
        extra_body={"enclave": {"knowledge": ["sdk-leave"]}},
    )
    message = answer.choices[0].message
    assert message.content and "480 days" in message.content
    [note] = message.annotations or []
    span = note.url_citation
    assert message.content[span.start_index : span.end_index].startswith("Employees receive")
    assert span.url.startswith("kb://sdk-leave/leave.md#chunk-")
    [citation] = (answer.model_extra or {})["citations"]
    assert citation["document"]["name"] == "leave.md" and citation["match"] == "extractive"
