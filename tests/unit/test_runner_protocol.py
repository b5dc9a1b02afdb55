"""The runner protocol: a provider behind a runner behaves as it does in-process.

The scripted provider is served by a real :class:`RunnerServer` (aiohttp on a
loopback port, on its own thread and event loop) and reached through a
:class:`RunnerProvider`, the way ``enclave serve`` reaches its runners; the
control plane above it is the ordinary in-process app.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from enclave.app import create_app
from enclave.errors import ModelNotFound, ProviderError, QueueFull
from enclave.providers.base import (
    ChatMessage,
    Finished,
    GenerationEvent,
    GenerationRequest,
    ModelCard,
    ResponseFormat,
    SamplingParams,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)
from enclave.providers.registry import ModelRegistry
from enclave.providers.runner_client import RunnerProvider
from enclave.runners import protocol
from enclave.runners.server import RunnerServer
from enclave.settings import Settings
from enclave.testing.scripted import Script, ScriptedProvider
from tests.conftest import ADMIN_KEY

TOKEN = "runner-test-token"
CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class FixedLink:
    """A runner that is always ready at one URL (the supervisor's shape, without a process)."""

    url: str | None
    cards: dict[str, list[ModelCard]]
    name: str = "test-runner"
    token: str = TOKEN

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def wait_ready(self, timeout: float) -> bool:
        return self.url is not None

    async def exit_reason(self, timeout: float) -> str:
        return "killed by SIGKILL"

    def unavailable(self) -> str:
        return f"runner '{self.name}' is restarting"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "state": "ready" if self.url else "restarting"}


class ThreadRunner:
    """A RunnerServer for ``provider`` on a loopback port, on its own thread."""

    def __init__(self, provider: ScriptedProvider) -> None:
        self.provider = provider
        self.loop = asyncio.new_event_loop()
        self.url = ""
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = RunnerServer([self.provider], TOKEN, {"path": "test"})
        self.app_runner = aiohttp.web.AppRunner(server.app(), handler_cancellation=True)
        self.loop.run_until_complete(self.app_runner.setup())
        site = aiohttp.web.TCPSite(self.app_runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.app_runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def served() -> Iterator[tuple[ThreadRunner, RunnerProvider]]:
    provider = ScriptedProvider()
    runner = ThreadRunner(provider)
    link = FixedLink(runner.url, {provider.name: provider.models()})
    yield runner, RunnerProvider(provider.name, link, restart_wait_s=0.1)
    runner.stop()


@pytest.fixture
def app(
    served: tuple[ThreadRunner, RunnerProvider], settings: Settings
) -> Iterator[tuple[TestClient, ScriptedProvider]]:
    runner, client_side = served
    registry = ModelRegistry([client_side], default_model="scripted")
    with TestClient(create_app(settings, registry=registry), raise_server_exceptions=False) as c:
        yield c, runner.provider


def sse_events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]


def test_requests_and_events_survive_the_wire_unchanged() -> None:
    request = GenerationRequest(
        model="m",
        messages=(
            ChatMessage("system", "Be brief."),
            ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "f", '{"a": 1}'),)),
            ChatMessage("tool", "42", tool_call_id="c1", name="f"),
        ),
        sampling=SamplingParams(max_tokens=7, temperature=0.0, stop=("\n",), seed=3),
        response_format=ResponseFormat("json_schema", {"type": "object"}, "answer"),
        tools=(ToolSpec("f", "does f", {"type": "object", "properties": {}}),),
        tool_choice="required",
        tenant="key-1",
    )
    wire = orjson.loads(orjson.dumps(protocol.request_to_wire(request)))
    assert protocol.request_from_wire(wire) == request
    for event in (
        TextDelta("é"),
        ToolCallDelta(0, ToolCall("c1", "f", "{}")),
        Finished("tool_calls", Usage(3, 4)),
    ):
        assert (
            protocol.event_from_wire(orjson.loads(orjson.dumps(protocol.event_to_wire(event))))
            == event
        )


def test_errors_come_back_as_the_same_class_with_status_and_headers() -> None:
    busy = protocol.error_from_wire(protocol.error_to_wire(QueueFull("busy", retry_after=3)))
    assert isinstance(busy, QueueFull) and busy.status_code == 429
    assert busy.headers == {"Retry-After": "3"} and busy.retry_after == 3
    missing = protocol.error_from_wire(protocol.error_to_wire(ModelNotFound("x")))
    assert isinstance(missing, ModelNotFound) and missing.param == "model"
    odd = protocol.error_from_wire({"type": "NoSuchError", "message": "?"})
    assert type(odd) is ProviderError


def test_chat_through_a_runner_matches_in_process(
    app: tuple[TestClient, ScriptedProvider],
) -> None:
    client, provider = app
    response = client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hello from the script."
    assert response.json()["usage"]["completion_tokens"] == 5
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_events(client.post("/v1/chat/completions", json=body, headers=AUTH).text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello from the script."
    assert provider.requests[-1].tenant != "anonymous"  # the tenant reached the engine


def test_admission_errors_keep_their_status(app: tuple[TestClient, ScriptedProvider]) -> None:
    client, provider = app
    provider.capacity = 0
    response = client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "queue_full"


def test_an_engine_error_mid_stream_is_an_sse_error_event(
    app: tuple[TestClient, ScriptedProvider],
) -> None:
    client, provider = app
    provider.script = Script(fail_after=2, error=ProviderError("engine went away"))
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
    events = sse_events(response.text)
    error = json.loads(events[-2])["error"]
    assert error["message"] == "engine went away" and error["type"] == "provider_error"


def test_embeddings_through_a_runner(app: tuple[TestClient, ScriptedProvider]) -> None:
    client, _ = app
    response = client.post(
        "/v1/embeddings", json={"model": "scripted-embed", "input": ["ab", "abcd"]}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    assert [item["embedding"] for item in response.json()["data"]] == [
        [2.0, 1.0, 0.0],
        [4.0, 1.0, 0.0],
    ]


def test_a_wrong_token_is_refused(served: tuple[ThreadRunner, RunnerProvider]) -> None:
    runner, _ = served

    async def call(token: str) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{runner.url}/runner/v1/info", headers={"Authorization": f"Bearer {token}"}
            ) as response,
        ):
            return response.status

    assert asyncio.run(call("wrong")) == 401
    assert asyncio.run(call("")) == 401
    assert asyncio.run(call(TOKEN)) == 200


def test_closing_a_stream_cancels_the_generation_in_the_runner(
    served: tuple[ThreadRunner, RunnerProvider],
) -> None:
    runner, client_side = served
    runner.provider.script = Script(words=["w"] * 200, delay=0.02)

    async def scenario() -> None:
        await client_side.start()
        try:
            stream = await client_side.generate(GenerationRequest(model="scripted", prompt="x"))
            events = aiter(stream)
            assert isinstance(await anext(events), TextDelta)
            assert runner.provider.in_flight == 1
            await stream.aclose()
            deadline = time.monotonic() + 5
            while runner.provider.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert runner.provider.in_flight == 0  # the engine stopped, long before 200 words
        finally:
            await client_side.close()

    asyncio.run(scenario())


def test_a_runner_that_is_down_fails_admission_with_a_502(
    served: tuple[ThreadRunner, RunnerProvider], settings: Settings
) -> None:
    _, client_side = served
    assert isinstance(client_side.runner, FixedLink)
    client_side.runner.url = None
    registry = ModelRegistry([client_side], default_model="scripted")
    with TestClient(create_app(settings, registry=registry), raise_server_exceptions=False) as c:
        response = c.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "upstream_unavailable" and "restarting" in error["message"]
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert "restarting" in ready.json()["checks"]["provider:scripted"]


# -- framing: events arrive in network reads of any size -----------------------------

STREAM_EVENTS: list[GenerationEvent] = [
    *(TextDelta(word) for word in ["Bread", " is", " \u00e9t\u00e9", " \U0001f35e", "\n", " old"]),
    ToolCallDelta(0, ToolCall("call_1", "bake", '{"loaves": 2}')),
    Finished("tool_calls", Usage(12, 7)),
]
STREAM_BYTES = b"".join(orjson.dumps(protocol.event_to_wire(e)) + b"\n" for e in STREAM_EVENTS)


@given(st.lists(st.integers(0, len(STREAM_BYTES)), max_size=12))
def test_event_lines_parse_back_in_order_wherever_the_reads_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM_BYTES)]
    lines = protocol.EventLines()
    seen = []
    for start, end in itertools.pairwise(bounds):
        seen += [protocol.event_from_wire(item) for item in lines.feed(STREAM_BYTES[start:end])]
        # nothing is parsed before its newline has arrived
        assert len(seen) == STREAM_BYTES[:end].count(b"\n")
    assert seen == STREAM_EVENTS


def test_coalesced_and_split_chunks_reach_the_client_as_the_same_events() -> None:
    """Many events in one HTTP chunk, and one event split across chunks, then an error."""
    error = protocol.error_to_wire(ProviderError("The engine broke mid-answer."))
    error_line = orjson.dumps({"error": error}) + b"\n"
    middle = len(STREAM_BYTES) // 2

    async def generate(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": protocol.NDJSON})
        await response.prepare(request)
        await response.write(STREAM_BYTES[:middle])  # several events and half of one
        await asyncio.sleep(0.05)
        await response.write(STREAM_BYTES[middle:-1])
        await asyncio.sleep(0.05)
        await response.write(STREAM_BYTES[-1:])
        return response

    async def failing(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": protocol.NDJSON})
        await response.prepare(request)
        await response.write(
            b"".join(orjson.dumps(protocol.event_to_wire(e)) + b"\n" for e in STREAM_EVENTS[:3])
            + error_line
        )
        return response

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post(f"{protocol.PREFIX}/providers/ok/generate", generate)
        app.router.add_post(f"{protocol.PREFIX}/providers/bad/generate", failing)
        app_runner = web.AppRunner(app)
        await app_runner.setup()
        site = web.TCPSite(app_runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{app_runner.addresses[0][1]}"
        try:
            ok = RunnerProvider("ok", FixedLink(url, {}))
            await ok.start()
            stream = await ok.generate(GenerationRequest(model="m", prompt="x"))
            assert [event async for event in stream] == STREAM_EVENTS
            await ok.close()

            bad = RunnerProvider("bad", FixedLink(url, {}))
            await bad.start()
            stream = await bad.generate(GenerationRequest(model="m", prompt="x"))
            seen = []
            with pytest.raises(ProviderError, match="engine broke mid-answer"):
                async for event in stream:
                    seen.append(event)
            assert seen == STREAM_EVENTS[:3]  # the events before the error line, in order
            await bad.close()
        finally:
            await app_runner.cleanup()

    asyncio.run(scenario())
