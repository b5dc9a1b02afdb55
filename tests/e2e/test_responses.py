"""``/v1/responses`` with the official `openai` client against a real `enclave serve`."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.model

MODEL = "smollm2-135m"


def test_create_and_continue_a_response(server: Server) -> None:
    client = server.client()
    first = client.responses.create(
        model=MODEL, input="What is the capital of France?", max_output_tokens=20, temperature=0
    )
    assert first.status in {"completed", "incomplete"} and first.output_text.strip()
    assert first.usage is not None and 0 < first.usage.output_tokens <= 20
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input="And of Italy?",
        max_output_tokens=20,
        temperature=0,
    )
    assert second.output_text.strip()
    assert client.responses.retrieve(second.id).output_text == second.output_text


def test_stream_a_response_with_the_sdk_helper(server: Server) -> None:
    client = server.client()
    with client.responses.stream(
        model=MODEL, input="Count to five.", max_output_tokens=20, temperature=0
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text and deltas
    assert final.usage is not None and final.usage.output_tokens > 0


def test_structured_output_and_a_forced_function_call(server: Server) -> None:
    client = server.client()
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    answer = client.responses.create(
        model=MODEL,
        input="Name a city in France.",
        max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    assert isinstance(json.loads(answer.output_text)["city"], str)

    tool = {
        "type": "function",
        "name": "weather",
        "description": "The weather in a city.",
        "parameters": schema,
        "strict": True,
    }
    called = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "weather"},
        max_output_tokens=60,
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert calls and calls[0].name == "weather"
    assert "city" in json.loads(calls[0].arguments)
