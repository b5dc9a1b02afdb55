"""Serialise generations into OpenAI response bodies and SSE streams.

Streams follow OpenAI exactly: a first chunk with the assistant role, one
chunk per text or tool-call delta, a chunk with ``finish_reason``, an
optional usage chunk (``stream_options.include_usage``), then
``data: [DONE]``. An error after the stream has started cannot change the
status code any more, so it is sent as a final ``data: {"error": ...}`` event,
which the official clients raise as an ``APIError``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from enclave.errors import EnclaveError, error_body
from enclave.inference import Generation
from enclave.providers.base import EmbeddingResult, Finished, TextDelta, ToolCall, ToolCallDelta
from enclave.wire.protocol import completion_id, now, tool_call_dict, usage_dict

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    return (
        b"data: "
        + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        + b"\n\n"
    )


def sse_error(exc: BaseException) -> bytes:
    if not isinstance(exc, EnclaveError):
        log.error("generation failed mid-stream", exc_info=exc)
        exc = EnclaveError("The generation failed. The details are in the server log.")
    return sse(error_body(exc, "/v1"))


async def collect(generation: Generation) -> tuple[str, list[ToolCall], Finished]:
    texts: list[str] = []
    calls: list[ToolCall] = []
    finished: Finished | None = None
    async for event in generation:
        if isinstance(event, TextDelta):
            texts.append(event.text)
        elif isinstance(event, ToolCallDelta):
            calls.append(event.call)
        else:
            finished = event
    assert finished is not None, "a generation always ends with Finished"
    return "".join(texts), calls, finished


async def chat_completion_body(generation: Generation) -> dict[str, Any]:
    text, calls, finished = await collect(generation)
    # No text at all (tool calls, or a tool call cut off by max_tokens): content null.
    message: dict[str, Any] = {"role": "assistant", "content": text if text and not calls else None}
    if calls:
        message["tool_calls"] = [tool_call_dict(call) for call in calls]
    return {
        "id": completion_id("chatcmpl"),
        "object": "chat.completion",
        "created": now(),
        "model": generation.card.id,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finished.finish_reason,
            }
        ],
        "usage": usage_dict(finished.usage.prompt_tokens, finished.usage.completion_tokens),
    }


async def chat_completion_events(
    generation: Generation, *, include_usage: bool
) -> AsyncIterator[bytes]:
    base = {
        "id": completion_id("chatcmpl"),
        "object": "chat.completion.chunk",
        "created": now(),
        "model": generation.card.id,
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse({**base, "choices": [choice]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for event in generation:
            if isinstance(event, TextDelta):
                yield chunk({"content": event.text})
            elif isinstance(event, ToolCallDelta):
                yield chunk({"tool_calls": [tool_call_dict(event.call, event.index)]})
            else:
                yield chunk({}, event.finish_reason)
                if include_usage:
                    usage = usage_dict(event.usage.prompt_tokens, event.usage.completion_tokens)
                    yield sse({**base, "choices": [], "usage": usage})
    except Exception as exc:
        yield sse_error(exc)
    finally:
        await generation.aclose()
    yield DONE


async def completion_body(generations: list[Generation], echo: list[str]) -> dict[str, Any]:
    choices = []
    prompt_tokens = completion_tokens = 0
    for index, generation in enumerate(generations):
        text, _, finished = await collect(generation)
        choices.append(
            {
                "index": index,
                "text": echo[index] + text if echo else text,
                "logprobs": None,
                "finish_reason": finished.finish_reason,
            }
        )
        prompt_tokens += finished.usage.prompt_tokens
        completion_tokens += finished.usage.completion_tokens
    return {
        "id": completion_id("cmpl"),
        "object": "text_completion",
        "created": now(),
        "model": generations[0].card.id,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage_dict(prompt_tokens, completion_tokens),
    }


async def completion_events(
    generations: list[Generation], echo: list[str], *, include_usage: bool
) -> AsyncIterator[bytes]:
    base = {
        "id": completion_id("cmpl"),
        "object": "text_completion",
        "created": now(),
        "model": generations[0].card.id,
        "system_fingerprint": None,
    }

    def chunk(index: int, text: str, finish_reason: str | None = None) -> bytes:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return sse({**base, "choices": [choice]})

    prompt_tokens = completion_tokens = 0
    try:
        for index, generation in enumerate(generations):
            if echo:
                yield chunk(index, echo[index])
            async for event in generation:
                if isinstance(event, TextDelta):
                    yield chunk(index, event.text)
                elif isinstance(event, Finished):
                    yield chunk(index, "", event.finish_reason)
                    prompt_tokens += event.usage.prompt_tokens
                    completion_tokens += event.usage.completion_tokens
        if include_usage:
            yield sse(
                {**base, "choices": [], "usage": usage_dict(prompt_tokens, completion_tokens)}
            )
    except Exception as exc:
        yield sse_error(exc)
    finally:
        for generation in generations:
            await generation.aclose()
    yield DONE


def embeddings_body(model: str, result: EmbeddingResult, encoding: str) -> dict[str, Any]:
    data = []
    for index, vector in enumerate(result.vectors):
        embedding: list[float] | str = vector
        if encoding == "base64":
            embedding = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


def fixed_chat_body(
    model: str,
    text: str,
    extra: dict[str, Any],
    annotations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A chat completion whose text was decided in code (no model), with ``extra`` fields
    and, when given, ``annotations`` on the message."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if annotations is not None:
        message["annotations"] = annotations
    return {
        "id": completion_id("chatcmpl"),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage_dict(0, 0),
        **extra,
    }


async def fixed_chat_stream(
    model: str,
    text: str,
    extra: dict[str, Any],
    annotations: list[dict[str, Any]] | None = None,
) -> AsyncIterator[bytes]:
    """The same as a stream: role, text, annotations (when given), stop, then a
    ``choices: []`` chunk with ``extra``."""
    base = {
        "id": completion_id("chatcmpl"),
        "object": "chat.completion.chunk",
        "created": now(),
        "model": model,
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    yield chunk({"content": text})
    if annotations is not None:
        yield chunk({"annotations": annotations})
    yield chunk({}, "stop")
    yield sse({**base, "choices": [], **extra})
    yield DONE


async def append_fields(
    stream: AsyncIterator[bytes], fields: dict[str, Any]
) -> AsyncIterator[bytes]:
    """Pass a chat SSE stream through, adding a ``choices: []`` chunk with ``fields`` before
    ``[DONE]``. A stream that ends in an error event gets no extra chunk.

    The gateway's streams send ``[DONE]`` as the end of a chunk (local streams
    as a chunk of its own, upstream relays after whole events).
    """
    failed = False
    try:
        async for data in stream:
            failed = failed or b'data: {"error"' in data
            if data.endswith(DONE) and not failed:
                yield data[: -len(DONE)]
                yield sse({"object": "chat.completion.chunk", "choices": [], **fields})
                yield DONE
                continue
            yield data
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()


def _event_with_model(event: bytes, model: str) -> bytes:
    if not event.startswith(b"data: {"):
        return event
    try:
        payload = json.loads(event[6:])
    except ValueError:
        return event
    if not isinstance(payload, dict) or payload.get("model", model) == model:
        return event
    return (
        b"data: "
        + json.dumps(
            {**payload, "model": model}, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )


def body_with_model(body: bytes, model: str) -> bytes:
    """A JSON response body whose ``model`` says ``model`` (what the client asked for)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if not isinstance(payload, dict) or payload.get("model", model) == model:
        return body
    return json.dumps({**payload, "model": model}, ensure_ascii=False).encode()


async def stream_with_model(stream: AsyncIterator[bytes], model: str) -> AsyncIterator[bytes]:
    """Pass an SSE stream through with each chunk's ``model`` set to ``model``."""
    try:
        async for data in stream:
            yield b"\n\n".join(_event_with_model(event, model) for event in data.split(b"\n\n"))
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
