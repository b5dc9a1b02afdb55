"""The embedded llama.cpp provider with the real SmolLM2 model.

The model is tiny, so these tests check properties (it parses, it validates,
it stops, it counts) rather than prose.
"""

from __future__ import annotations

import asyncio
import json
import time

import jsonschema
import pytest

from enclave.errors import InvalidRequest, QueueFull
from enclave.providers.base import (
    ChatMessage,
    Finished,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
)
from enclave.providers.llamacpp import LlamaCppProvider, _Job
from tests.integration.conftest import Loop, start_provider

pytestmark = pytest.mark.model

STORY = "Write a very long story about a dragon who learns to cook. Use many chapters."


def chat(text: str, **options: object) -> GenerationRequest:
    sampling = options.pop("sampling", SamplingParams(temperature=0, max_tokens=64))
    return GenerationRequest(
        model="smollm2-135m",
        messages=(ChatMessage("user", text),),
        sampling=sampling,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


async def run(provider: LlamaCppProvider, request: GenerationRequest) -> tuple[str, list, Finished]:
    stream = await provider.generate(request)
    text, calls, finished = "", [], None
    async for event in stream:
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, ToolCallDelta):
            calls.append(event.call)
        else:
            finished = event
    assert finished is not None
    return text, calls, finished


SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "enum": ["Paris", "Berlin", "Rome"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
            "sunny": {"type": "boolean"},
            "rain_probability": {"type": "number", "minimum": 0, "maximum": 1},
            "temperature": {"type": "integer", "minimum": -40, "maximum": 45},
        },
        "required": ["city", "tags", "sunny", "rain_probability", "temperature"],
        "additionalProperties": False,
    },
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("seed", [1, 2])
def test_json_schema_output_always_validates(
    loop: Loop, llama: LlamaCppProvider, schema: dict, seed: int
) -> None:
    request = chat(
        "Describe a person or a city as JSON.",
        sampling=SamplingParams(temperature=1.0, seed=seed, max_tokens=200),
        response_format=ResponseFormat("json_schema", schema),
    )
    text, _, finished = loop.run(run(llama, request))
    assert finished.finish_reason == "stop"
    jsonschema.validate(json.loads(text), schema)


def test_json_object_mode_returns_an_object(loop: Loop, llama: LlamaCppProvider) -> None:
    request = chat(
        "Give me a JSON object with a greeting.",
        sampling=SamplingParams(temperature=0, max_tokens=120),
        response_format=ResponseFormat("json_object"),
    )
    text, _, finished = loop.run(run(llama, request))
    if finished.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.lstrip().startswith("{")


WEATHER = ToolSpec(
    "get_weather",
    "Current weather for a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}, "celsius": {"type": "boolean"}},
        "required": ["city"],
    },
)
EMAIL = ToolSpec(
    "send_email",
    "Send an e-mail",
    {
        "type": "object",
        "properties": {"to": {"type": "string", "maxLength": 40}},
        "required": ["to"],
    },
)


@pytest.mark.parametrize("choice", ["required", "get_weather", "send_email"])
def test_forced_tool_calls_have_valid_arguments(
    loop: Loop, llama: LlamaCppProvider, choice: str
) -> None:
    request = chat(
        "What is the weather in Paris?",
        sampling=SamplingParams(temperature=0, max_tokens=100),
        tools=(WEATHER, EMAIL),
        tool_choice=choice,
    )
    text, calls, finished = loop.run(run(llama, request))
    assert finished.finish_reason == "tool_calls"
    assert text == ""
    (call,) = calls
    if choice != "required":
        assert call.name == choice
    spec = {"get_weather": WEATHER, "send_email": EMAIL}[call.name]
    jsonschema.validate(json.loads(call.arguments), spec.parameters)


def test_auto_tool_choice_yields_either_text_or_a_valid_call(
    loop: Loop, llama: LlamaCppProvider
) -> None:
    request = chat(
        "What is the weather in Paris?",
        sampling=SamplingParams(temperature=0, max_tokens=100),
        tools=(WEATHER,),
        tool_choice="auto",
    )
    text, calls, finished = loop.run(run(llama, request))
    if calls:
        assert finished.finish_reason == "tool_calls"
        jsonschema.validate(json.loads(calls[0].arguments), WEATHER.parameters)
    else:
        assert text and not text.startswith("<tool_call>")


def test_usage_counts_are_exact(loop: Loop, llama: LlamaCppProvider) -> None:
    request = chat(STORY, sampling=SamplingParams(temperature=0, max_tokens=17))
    text, _, finished = loop.run(run(llama, request))
    model = llama.model("smollm2-135m")
    assert model.template is not None
    prompt = model.template.render(request.messages)
    expected_prompt = len(model.tokenizer.tokenize(prompt.encode(), add_bos=True, special=True))
    assert finished.usage.prompt_tokens == expected_prompt
    assert finished.finish_reason == "length"
    assert finished.usage.completion_tokens == 17
    assert text


def test_stop_sequences_end_the_answer(loop: Loop, llama: LlamaCppProvider) -> None:
    request = chat(
        STORY, sampling=SamplingParams(temperature=0, max_tokens=200, stop=(".", " the"))
    )
    text, _, finished = loop.run(run(llama, request))
    assert finished.finish_reason == "stop"
    assert "." not in text and " the" not in text


def test_a_seed_makes_sampling_repeatable(loop: Loop, llama: LlamaCppProvider) -> None:
    request = chat(STORY, sampling=SamplingParams(temperature=1.0, seed=42, max_tokens=30))
    first = loop.run(run(llama, request))[0]
    second = loop.run(run(llama, request))[0]
    assert first == second


def test_a_prompt_over_the_context_is_a_400(loop: Loop, llama: LlamaCppProvider) -> None:
    with pytest.raises(InvalidRequest) as info:
        loop.run(llama.generate(chat("word " * 3000)))
    assert info.value.code == "context_length_exceeded"


def test_closing_a_stream_stops_generation_within_a_few_tokens(
    loop: Loop, llama: LlamaCppProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = llama.model("smollm2-135m")
    before = model.stats.cancelled
    # Text deltas the decode thread has produced, counted on its side: on a loaded machine
    # the reader lags behind, so "a few tokens" is measured from what had been produced
    # when the stream was closed, not from what the reader had seen.
    produced = [0]
    emit = _Job.emit

    def counting_emit(job: _Job, event: object) -> None:
        produced[0] += isinstance(event, TextDelta)
        emit(job, event)  # type: ignore[arg-type]

    monkeypatch.setattr(_Job, "emit", counting_emit)

    async def read_three_then_leave() -> tuple[Finished, int]:
        stream = await llama.generate(
            chat(STORY, sampling=SamplingParams(temperature=0, max_tokens=1000))
        )
        seen = 0
        async for event in stream:
            seen += isinstance(event, TextDelta)
            if seen == 3:
                break
        at_close = produced[0]
        await stream.aclose()
        job = stream._job  # type: ignore[attr-defined]
        while True:  # the decode thread reports how far it got
            event = await asyncio.wait_for(job.events.get(), 30)
            if isinstance(event, Finished):
                return event, at_close

    finished, at_close = loop.run(read_three_then_leave())
    assert finished.finish_reason == "cancelled"
    # Each text delta is at least one token; after the close only a few more are decoded.
    assert finished.usage.completion_tokens <= at_close + 5, (finished.usage, at_close)
    assert at_close < 1000 - 5  # the bound above can fail: the story runs far longer
    # The worker counts the cancellation on the event loop once the decode thread returns,
    # which may be just after the Finished event: wait for it on that loop (a sleep on this
    # thread would hold the loop and the count would never come).

    async def counted() -> int:
        deadline = time.monotonic() + 10
        while model.stats.cancelled == before and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return model.stats.cancelled

    assert loop.run(counted()) == before + 1


def test_eight_concurrent_streams_all_complete(loop: Loop, llama: LlamaCppProvider) -> None:
    async def many() -> list[Finished]:
        requests = [
            chat(f"Tell me fact number {index} about owls.", sampling=SamplingParams(max_tokens=24))
            for index in range(8)
        ]
        results = await asyncio.gather(*(run(llama, request) for request in requests))
        return [finished for _, _, finished in results]

    finished = loop.run(many())
    assert len(finished) == 8
    assert all(f.finish_reason in {"stop", "length"} for f in finished)
    assert all(f.usage.completion_tokens > 0 for f in finished)


def test_a_full_queue_is_refused(loop: Loop) -> None:
    provider = start_provider(loop, slots=1, queue_size=1)

    async def flood() -> None:
        long = chat(STORY, sampling=SamplingParams(temperature=0, max_tokens=400))
        running = await provider.generate(long)
        first = await anext(aiter(running))  # it holds the only slot now
        assert isinstance(first, TextDelta)
        waiting = await provider.generate(long)  # fills the queue
        try:
            with pytest.raises(QueueFull) as info:
                await provider.generate(long)
            assert info.value.retry_after >= 1
        finally:
            await waiting.aclose()
            await running.aclose()

    try:
        loop.run(flood())
    finally:
        loop.run(provider.close())
