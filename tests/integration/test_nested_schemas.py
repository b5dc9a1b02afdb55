"""Nested pydantic schemas (``$defs``/``$ref``, enums, optional fields) with the real
SmolLM2 model: through response_format (a body and a stream) and through tools."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from enclave.inference import Generation
from enclave.metrics import Metrics
from enclave.providers.base import GenerationRequest, ResponseFormat, SamplingParams, ToolSpec
from enclave.providers.llamacpp import LlamaCppProvider
from enclave.wire import responses
from tests.integration.conftest import Loop
from tests.integration.test_llamacpp import chat, run
from tests.nested_models import Person, Shipment

pytestmark = pytest.mark.model

PERSON_FORMAT = ResponseFormat("json_schema", Person.model_json_schema(), "person")
ASK = "Describe a person called Ada who lives in Oslo as JSON."


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_nested_schema_output_parses_into_the_model(
    loop: Loop, llama: LlamaCppProvider, seed: int
) -> None:
    request = chat(
        ASK,
        response_format=PERSON_FORMAT,
        sampling=SamplingParams(temperature=1.0, seed=seed, max_tokens=300),
    )
    text, _, finished = loop.run(run(llama, request))
    assert finished.finish_reason == "stop", text
    Person.model_validate_json(text)  # three levels, enums, optional fields


async def _generation(llama: LlamaCppProvider, request: GenerationRequest) -> Generation:
    stream = await llama.generate(request)
    return Generation(stream, llama.model("smollm2-135m").card(), Metrics(), time.monotonic())


def test_a_nested_schema_stream_ends_without_an_error_event(
    loop: Loop, llama: LlamaCppProvider
) -> None:
    """The stream used to send the valid JSON, then an error event (Unresolvable ref)."""
    request = chat(
        ASK, response_format=PERSON_FORMAT, sampling=SamplingParams(temperature=0, max_tokens=300)
    )

    async def stream() -> list[bytes]:
        generation = await _generation(llama, request)
        return [c async for c in responses.chat_completion_events(generation, include_usage=True)]

    chunks = loop.run(stream())
    assert chunks[-1] == responses.DONE
    events = [json.loads(chunk[6:]) for chunk in chunks[:-1]]
    assert not any("error" in event for event in events)
    text = "".join(
        (event["choices"] or [{}])[0].get("delta", {}).get("content") or "" for event in events
    )
    Person.model_validate_json(text)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("choice", ["required", "save_person"])
def test_tools_with_nested_schemas_call_with_valid_arguments(
    loop: Loop, llama: LlamaCppProvider, choice: str
) -> None:
    tools = (
        ToolSpec("save_person", "Save a person.", Person.model_json_schema()),
        ToolSpec("ship", "Ship a parcel.", Shipment.model_json_schema()),
    )
    request = chat(
        "Save Ada from Oslo.",
        tools=tools,
        tool_choice=choice,
        sampling=SamplingParams(temperature=0, max_tokens=300),
    )
    text, calls, finished = loop.run(run(llama, request))
    assert finished.finish_reason == "tool_calls" and not text
    [call] = calls
    if call.name == "save_person":
        Person.model_validate_json(call.arguments)
    else:
        Shipment.model_validate_json(call.arguments)


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_a_tool_call_cut_off_by_max_tokens_is_null_content_and_length(
    loop: Loop, llama: LlamaCppProvider, choice: str
) -> None:
    tools = (ToolSpec("save_person", "Save a person.", Person.model_json_schema()),)
    request = chat(
        "Call save_person for Ada from Oslo.",
        tools=tools,
        tool_choice=choice,
        sampling=SamplingParams(temperature=0, max_tokens=8),
    )

    async def body() -> dict[str, Any]:
        generation = await _generation(llama, request)
        return await responses.chat_completion_body(generation)

    answer = loop.run(body())
    [only] = answer["choices"]
    if choice == "auto" and only["message"]["content"] and only["finish_reason"] == "length":
        # The model answered in text: fine, as long as it is not call markup.
        assert not only["message"]["content"].lstrip().startswith("<")
        return
    assert only["finish_reason"] == "length"
    assert only["message"]["content"] is None
    assert "tool_calls" not in only["message"]
