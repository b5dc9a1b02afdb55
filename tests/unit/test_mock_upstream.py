"""The mock OpenAI upstream speaks well enough for the official client, and fails on cue."""

from __future__ import annotations

import asyncio
import base64
import math
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import OpenAI

from enclave.testing.mock_upstream import MockUpstream, running_mock_upstream

TIMEOUT = aiohttp.ClientTimeout(total=5)
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "one two three"}]}


@pytest.fixture(scope="module")
def shared_mock() -> Iterator[MockUpstream]:
    with running_mock_upstream(chunks=4, models=("mock", "other")) as server:
        yield server


@pytest.fixture
def mock(shared_mock: MockUpstream) -> MockUpstream:
    shared_mock.reset()
    return shared_mock


@pytest.fixture
def client(mock: MockUpstream) -> Iterator[OpenAI]:
    with OpenAI(base_url=mock.url, api_key="x", max_retries=0, timeout=5) as c:
        yield c


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


async def post_raw(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(url, json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        return await resp.read()


# ------------------------------------------------------------------ answers
def test_chat_completion_parses_with_the_openai_client(mock: MockUpstream, client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "one two three"}]
    )
    assert answer.model == "gpt-test"
    assert answer.choices[0].message.content == "tok0 tok1 tok2 tok3 "
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 4)
    assert answer.usage.total_tokens == 7


def test_prompt_tokens_count_words_in_every_message(client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model="m",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a b c"}]},
        ],
    )
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 5


def test_chat_stream_sends_k_chunks_and_no_usage_unless_asked(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert [c.choices[0].delta.content for c in chunks] == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, "stop"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None and c.model == "gpt-test" for c in chunks)


def test_chat_stream_ends_with_a_usage_chunk_when_asked(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "hi there"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) == 5
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 4)
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_stream_is_chunked_sse_ending_in_done(mock: MockUpstream) -> None:
    async def go() -> tuple[dict[str, str], bytes]:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.post(mock.url + "/chat/completions", json={**CHAT, "stream": True}) as resp,
        ):
            return dict(resp.headers), await resp.read()

    headers, body = run(go())
    assert headers["Content-Type"] == "text/event-stream"
    assert headers["Transfer-Encoding"] == "chunked"
    events = body.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert len(events) == 4 + 2


def test_text_completions_stream_and_non_stream(client: OpenAI) -> None:
    answer = client.completions.create(model="base", prompt="say something nice")
    assert answer.object == "text_completion"
    assert answer.model == "base"
    assert answer.choices[0].text == "tok0 tok1 tok2 tok3 "
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 3
    chunks = list(
        client.completions.create(
            model="base", prompt="x", stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks[:-1]) == answer.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_chunk_count_header_overrides_the_setting(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-mock-chunks": "7"},
        )
    )
    assert len(chunks) == 7
    answer = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-chunks": "2"},
    )
    assert answer.choices[0].message.content == "tok0 tok1 "
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 2


def test_delay_header_spaces_out_chunks(mock: MockUpstream) -> None:
    async def go() -> list[float]:
        arrivals: list[float] = []
        headers = {"x-mock-delay": "0.05", "x-mock-chunks": "3"}
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.post(
                mock.url + "/chat/completions", json={**CHAT, "stream": True}, headers=headers
            ) as resp,
        ):
            start = time.perf_counter()
            async for _ in resp.content.iter_any():
                arrivals.append(time.perf_counter() - start)
        return arrivals

    arrivals = run(go())
    assert arrivals[-1] >= 0.14
    assert len(arrivals) >= 3  # the chunks came separately, not as one write


def test_bad_override_header_is_a_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-chunks": "many"},
        )


def test_embeddings_are_deterministic_unit_vectors(client: OpenAI) -> None:
    first = client.embeddings.create(model="embed", input=["alpha beta", "gamma"])
    again = client.embeddings.create(model="embed", input="alpha beta", encoding_format="float")
    vectors = [d.embedding for d in first.data]
    assert first.model == "embed"
    assert [len(v) for v in vectors] == [8, 8]
    assert vectors[0] != vectors[1]
    assert math.isclose(math.fsum(x * x for x in vectors[0]), 1.0, rel_tol=1e-5)
    # The client asked for base64 (float32) the first time and floats the second.
    assert again.data[0].embedding == pytest.approx(vectors[0], rel=1e-6)
    assert first.usage.prompt_tokens == 3


def test_embedding_dimension_is_configurable() -> None:
    with running_mock_upstream(embedding_dim=32) as server:

        async def go() -> dict[str, Any]:
            async with (
                aiohttp.ClientSession(timeout=TIMEOUT) as session,
                session.post(
                    server.url + "/embeddings",
                    json={"model": "e", "input": "hi", "encoding_format": "base64"},
                ) as resp,
            ):
                result: dict[str, Any] = await resp.json()
                return result

        body = run(go())
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert len(struct.unpack("<32f", raw)) == 32


def test_models_and_health(mock: MockUpstream, client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["mock", "other"]
    assert client.models.retrieve("other").id == "other"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("missing")

    async def health() -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.get(f"http://127.0.0.1:{mock.port}/health") as resp,
        ):
            return resp.status, await resp.json()

    assert run(health()) == (200, {"status": "ok"})


# ----------------------------------------------------------------- failures
def test_fail_status_answers_with_an_openai_error(mock: MockUpstream, client: OpenAI) -> None:
    mock.fail_status = 503
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "failed prompt"}]
        )
    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "server_error"
    mock.fail_status = 429
    with pytest.raises(openai.RateLimitError):
        client.models.list()
    # Failed requests are still logged, so tests can see what arrived.
    assert mock.requests[0].body["messages"][0]["content"] == "failed prompt"
    mock.fail_status = None
    assert client.models.list().data


def test_die_after_chunks_truncates_the_stream_for_the_openai_client(
    mock: MockUpstream, client: OpenAI
) -> None:
    mock.die_after_chunks = 2
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            received.append(chunk.choices[0].delta.content)
    assert received == ["tok0 ", "tok1 "]


@pytest.mark.parametrize("delay", ["0", "0.01"])
def test_die_after_chunks_sends_no_terminator(mock: MockUpstream, delay: str) -> None:
    mock.die_after_chunks = 1

    async def go() -> tuple[bytes, BaseException | None]:
        seen = b""
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.post(
                mock.url + "/chat/completions",
                json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
                headers={"x-mock-delay": delay},
            ) as resp,
        ):
            try:
                async for data in resp.content.iter_any():
                    seen += data
            except aiohttp.ClientPayloadError as exc:
                return seen, exc
        return seen, None

    seen, error = run(go())
    assert error is not None
    assert seen.count(b"data: ") == 1
    assert b"tok0 " in seen
    assert b"[DONE]" not in seen


def test_die_before_headers_is_a_connection_error(mock: MockUpstream, client: OpenAI) -> None:
    mock.die_before_headers = True
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "lost"}])
    assert [r.path for r in mock.requests] == ["/v1/chat/completions"]
    mock.reset()
    assert client.models.list().data
    assert len(mock.requests) == 1


# ---------------------------------------------------------- log and transport
def test_request_log_records_what_arrived(mock: MockUpstream, client: OpenAI) -> None:
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "public words"}],
        extra_headers={"X-Trace": "abc"},
    )
    client.models.list()
    chat, models = mock.requests
    assert (chat.method, chat.path) == ("POST", "/v1/chat/completions")
    assert chat.body["messages"] == [{"role": "user", "content": "public words"}]
    assert chat.headers["x-trace"] == "abc"
    assert chat.headers["authorization"] == "Bearer x"
    assert (models.method, models.path, models.body) == ("GET", "/v1/models", None)
    assert all("secret" not in r.raw.decode() for r in mock.requests)
    mock.reset()
    assert mock.requests == []


def test_keep_alive_serves_sequential_requests_on_one_connection(mock: MockUpstream) -> None:
    async def go() -> list[bytes]:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
            bodies = []
            for stream in (False, True, False, True, False):
                async with session.post(
                    mock.url + "/chat/completions", json={**CHAT, "stream": stream}
                ) as resp:
                    assert resp.status == 200
                    bodies.append(await resp.read())
            return bodies

    bodies = run(go())
    assert len(bodies) == 5
    assert b"tok3" in bodies[-1]
    assert len(mock.requests) == 5
    assert mock.connections_accepted == 1


def test_pipelined_requests_are_answered_in_order(mock: MockUpstream) -> None:
    async def go() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
        slow = b'{"model":"slow","stream":true,"messages":[]}'
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-mock-delay: 0.01\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (len(slow), slow)
            + b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = await reader.read()
        writer.close()
        return data

    data = run(go())
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.index(b"[DONE]") < data.index(b'"object":"list"')


def test_close_does_not_wait_for_open_streams() -> None:
    async def go() -> float:
        server = MockUpstream(chunks=100, delay=1.0)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        body = b'{"model":"m","stream":true}'
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await reader.readuntil(b"\r\n\r\n")
        start = time.perf_counter()
        await server.close()
        writer.close()
        return time.perf_counter() - start

    assert run(go()) < 1.0


def test_module_serves_from_the_command_line() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave.testing.mock_upstream", "--port", "0", "--models", "a,b"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("mock upstream on http://127.0.0.1:")
        url = line.split()[-1]
        with OpenAI(base_url=url, api_key="x", max_retries=0, timeout=5) as c:
            assert [m.id for m in c.models.list()] == ["a", "b"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_record_false_keeps_no_log() -> None:
    with (
        running_mock_upstream(record=False) as server,
        OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=5) as c,
    ):
        assert c.models.list().data
        assert server.requests == []


# ------------------------------------------------------------- fixed reply
HOSTILE = "Here is <script>x = 1</script> and **bold** text."


def test_a_fixed_reply_is_streamed_in_pieces_and_answered_whole() -> None:
    with (
        running_mock_upstream(reply=HOSTILE, chunks=3) as server,
        OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=5) as c,
    ):
        chunks = list(
            c.chat.completions.create(
                model="bot",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-mock-chunks": "2"},  # a fixed reply ignores it
            )
        )
        answer = c.chat.completions.create(
            model="bot", messages=[{"role": "user", "content": "hi"}]
        )
        text = c.completions.create(model="bot", prompt="hi")
    pieces = [ch.choices[0].delta.content for ch in chunks[:-1]]
    assert pieces[:3] == ["Here ", "is ", "<script>x "]
    assert "".join(p or "" for p in pieces) == HOSTILE
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(pieces) == 8
    assert answer.choices[0].message.content == HOSTILE
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 8
    assert text.choices[0].text == HOSTILE


def test_the_command_line_takes_a_fixed_reply() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave.testing.mock_upstream", "--port", "0", "--reply", HOSTILE],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        with OpenAI(base_url=url, api_key="x", max_retries=0, timeout=5) as c:
            answer = c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        assert answer.choices[0].message.content == HOSTILE
    finally:
        proc.terminate()
        proc.wait(timeout=10)
