"""OpenAI SSE to GenerationEvent: the translation alone, and OpenAIEngine over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web

from enclave.errors import InvalidRequest, ProviderError, UpstreamUnavailable
from enclave.providers.base import (
    ChatMessage,
    Finished,
    GenerationEvent,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)
from enclave.providers.openai_engine import ChunkTranslator, OpenAIEngine, chat_body, sse_data
from enclave.testing.mock_upstream import MockUpstream

T = TypeVar("T")
CHAT = GenerationRequest(model="m", messages=[ChatMessage("user", "hello there")])


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout=20)

    return asyncio.run(bounded())


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def translate(chunks: Sequence[dict[str, Any]]) -> list[GenerationEvent]:
    translator = ChunkTranslator("llama-server")
    events = [event for item in chunks for event in translator.feed(item)]
    return events + translator.finish()


# -- the translation -----------------------------------------------------------


def test_text_deltas_then_finish_with_the_servers_usage() -> None:
    events = translate(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "length"),
            {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}},
        ]
    )
    assert events == [TextDelta("Hel"), TextDelta("lo"), Finished("length", Usage(7, 2))]


def test_a_completion_stream_uses_text_and_usage_defaults_to_the_pieces_seen() -> None:
    chunks = [{"choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in ("a", "b")]
    events = translate([*chunks, {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}])
    assert events == [TextDelta("a"), TextDelta("b"), Finished("stop", Usage(0, 2))]


def test_tool_call_fragments_are_joined_into_one_call_each_before_finish() -> None:
    def call(index: int, **fields: Any) -> dict[str, Any]:
        return chunk({"tool_calls": [{"index": index, **fields}]})

    events = translate(
        [
            call(0, id="call_a", type="function", function={"name": "get_weather"}),
            call(0, function={"arguments": '{"city": '}),
            call(1, id="call_b", function={"name": "get_time", "arguments": "{}"}),
            call(0, function={"arguments": '"Paris"}'}),
            chunk({}, "stop"),  # llama-server may say stop; the calls make it tool_calls
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}},
        ]
    )
    assert events == [
        ToolCallDelta(0, ToolCall("call_a", "get_weather", '{"city": "Paris"}')),
        ToolCallDelta(1, ToolCall("call_b", "get_time", "{}")),
        Finished("tool_calls", Usage(3, 9)),
    ]


def test_an_error_in_the_stream_raises_provider_error_with_its_message() -> None:
    translator = ChunkTranslator("vllm")
    assert translator.feed(chunk({"content": "x"})) == [TextDelta("x")]
    with pytest.raises(ProviderError, match="vllm failed mid-stream: CUDA out of memory"):
        translator.feed({"error": {"message": "CUDA out of memory", "code": 500}})


def test_a_stream_that_ends_without_a_finish_reason_is_an_error() -> None:
    translator = ChunkTranslator("llama-server")
    translator.feed(chunk({"content": "half"}))
    with pytest.raises(ProviderError, match="ended the stream before it finished"):
        translator.finish()


def test_sse_data_lines() -> None:
    assert sse_data(b'data: {"a": 1}\r\n') == b'{"a": 1}'
    assert sse_data(b"data:[DONE]\n") == b"[DONE]"
    assert sse_data(b": keep-alive\n") is None
    assert sse_data(b"\n") is None


def test_the_request_body_carries_sampling_tools_and_format() -> None:
    request = GenerationRequest(
        model="m",
        messages=[
            ChatMessage("user", "weather?"),
            ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "get_weather", "{}"),)),
            ChatMessage("tool", "sunny", tool_call_id="c1"),
        ],
        sampling=SamplingParams(max_tokens=5, temperature=0.0, stop=("\n",), seed=3),
        response_format=ResponseFormat("json_schema", {"type": "object"}, "answer"),
        tools=[ToolSpec("get_weather", "Weather now")],
        tool_choice="get_weather",
    )
    body = chat_body(request, "upstream-name")
    assert body["model"] == "upstream-name" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["stop"], body["seed"]) == (
        5,
        0.0,
        ["\n"],
        3,
    )
    assert body["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert body["messages"][1]["content"] is None
    assert body["messages"][2]["tool_call_id"] == "c1"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"]["json_schema"] == {
        "name": "answer",
        "schema": {"type": "object"},
    }
    raw = chat_body(GenerationRequest(model="m", prompt="Once"), "u")
    assert raw["prompt"] == "Once" and "messages" not in raw


# -- OpenAIEngine against servers on loopback -----------------------------------


@asynccontextmanager
async def engine_for(url: str, **kwargs: Any) -> AsyncIterator[OpenAIEngine]:
    engine = OpenAIEngine("p", "m", base_url=url, engine="llama-server", **kwargs)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


@asynccontextmanager
async def mock() -> AsyncIterator[MockUpstream]:
    server = MockUpstream(models=["m"], chunks=4)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@asynccontextmanager
async def scripted_sse(lines: list[bytes]) -> AsyncIterator[str]:
    """A server whose chat completions stream exactly ``lines``, then close."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for line in lines:
            await response.write(line)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def drain(engine: OpenAIEngine, request: GenerationRequest) -> list[GenerationEvent]:
    stream = await engine.generate(request)
    try:
        return [event async for event in stream]
    finally:
        await stream.aclose()


def test_a_chat_streams_text_and_usage_from_the_server() -> None:
    async def scenario() -> None:
        async with mock() as server, engine_for(server.url) as engine:
            events = await drain(engine, CHAT)
            sent = server.requests[-1]
            assert sent.path == "/v1/chat/completions" and sent.body["stream"] is True
            assert engine.in_flight == 0
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        assert text == "tok0 tok1 tok2 tok3 "
        assert events[-1] == Finished("stop", Usage(prompt_tokens=2, completion_tokens=4))

    run(scenario())


def test_tool_calls_and_an_error_event_through_the_engine() -> None:
    def data(value: Any) -> bytes:
        return b"data: " + orjson.dumps(value) + b"\n\n"

    calls = [
        data(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]})),
        data(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 1}'}}]})),
        data(chunk({}, "tool_calls")),
        b"data: [DONE]\n\n",
    ]
    failing = [data(chunk({"content": "a"})), data({"error": {"message": "slot crashed"}})]

    async def scenario() -> None:
        async with scripted_sse(calls) as url, engine_for(url) as engine:
            events = await drain(engine, CHAT)
            assert events[0] == ToolCallDelta(0, ToolCall("c", "f", '{"x": 1}'))
            assert isinstance(events[-1], Finished) and events[-1].finish_reason == "tool_calls"
        async with scripted_sse(failing) as url, engine_for(url) as engine:
            stream = await engine.generate(CHAT)
            seen: list[GenerationEvent] = []
            with pytest.raises(ProviderError, match="slot crashed"):
                async for event in stream:
                    seen.append(event)
            await stream.aclose()
            assert seen == [TextDelta("a")] and engine.in_flight == 0

    run(scenario())


def test_an_upstream_that_dies_mid_stream_or_refuses_is_a_provider_error() -> None:
    async def scenario() -> None:
        async with mock() as server, engine_for(server.url) as engine:
            server.die_after_chunks = 2
            stream = await engine.generate(CHAT)
            seen: list[GenerationEvent] = []
            with pytest.raises(ProviderError):
                async for event in stream:
                    seen.append(event)
            await stream.aclose()
            assert seen == [TextDelta("tok0 "), TextDelta("tok1 ")]
            server.reset()
            server.fail_status = 503
            with pytest.raises(UpstreamUnavailable, match="HTTP 503"):
                await engine.generate(CHAT)
            server.fail_status = 400
            with pytest.raises(InvalidRequest):
                await engine.generate(CHAT)
            assert engine.in_flight == 0
        async with engine_for("http://127.0.0.1:9/v1") as engine:  # nothing listens
            with pytest.raises(UpstreamUnavailable, match="unreachable"):
                await engine.generate(CHAT)

    run(scenario())


def test_input_limits_and_closing_the_stream_closes_the_request() -> None:
    async def scenario() -> None:
        server = MockUpstream(models=["m"], chunks=50, delay=0.05)
        await server.start()
        try:
            async with engine_for(server.url, context_length=4, chars_per_token=4) as engine:
                long = GenerationRequest(model="m", messages=[ChatMessage("user", "x" * 17)])
                with pytest.raises(InvalidRequest) as refused:
                    await engine.generate(long)
                assert refused.value.code == "context_length_exceeded"
                assert server.requests == []  # refused before anything was sent
                stream = await engine.generate(CHAT)
                events = aiter(stream)
                assert await anext(events) == TextDelta("tok0 ")
                await stream.aclose()
                assert engine.in_flight == 0
                for _ in range(40):  # the mock sees its client go
                    if not server._connections:
                        break
                    await asyncio.sleep(0.05)
                assert not server._connections
                assert (await engine.probe()).embeddings
                result = await engine.embed("m", ["y" * 100])
                assert len(result.vectors) == 1
                assert server.requests[-1].body["input"] == ["y" * 16]  # cut to 4 x 4 chars
        finally:
            await server.close()

    run(scenario())


def test_probe_finds_what_the_server_answers() -> None:
    async def scenario() -> None:
        async with mock() as server, engine_for(server.url) as engine:
            caps = await engine.probe()
            assert caps.chat and caps.embeddings
            server.fail_status = 501  # llama-server without --embeddings refuses both here
            caps = await engine.probe()
            assert not caps.chat and not caps.embeddings
            with pytest.raises(InvalidRequest, match="does not generate"):
                await engine.generate(CHAT)

    run(scenario())
