"""The runner protocol: how a control plane drives the engines of a runner over HTTP.

A runner serves the :class:`~enclave.providers.base.Provider` objects it hosts,
one to one, so everything a provider does in-process (chat templates,
grammar-constrained output, tool-call parsing, fair queues, embedding
priorities) happens unchanged inside the runner, and the control plane's
:class:`~enclave.providers.runner_client.RunnerProvider` only forwards calls.
Every request carries ``Authorization: Bearer <token>``; anything else gets 401.
Bodies are JSON (orjson); the version is :data:`PROTOCOL_VERSION`.

``GET  /runner/v1/info``
    ``{"protocol", "pid", "cpu", "providers": [{"name", "type", "models": [card]}]}``
``GET  /runner/v1/health``
    ``{"providers": {name: {"ok", "detail", "queue_depth", "queues", "state"}}}``
``POST /runner/v1/providers/{name}/generate``  body ``{"request": GenerationRequest}``
    Admission follows the provider contract: a request the provider refuses
    answers with the error's HTTP status and ``{"error": error}``. An admitted
    one answers 200 with ``application/x-ndjson``: one event per line,
    ``{"text"}``, ``{"tool_call": {"index", "id", "name", "arguments"}}``, and
    last ``{"finished": {"finish_reason", "usage"}}`` or ``{"error": error}``.
    Closing the connection cancels the generation.
``POST /runner/v1/providers/{name}/embed``  body ``{"model", "inputs", "priority"}``
    ``{"vectors", "prompt_tokens"}``; closing the connection drops the request
    before its next batch, as cancelling an in-process ``embed`` does.
``POST /runner/v1/providers/{name}/transcribe?model=M&options=JSON``  body: the audio bytes
    ``{"text", "language", "duration", "segments": [[id, start, end, text, [[word, start,
    end]]]]}``; ``options`` are :class:`~enclave.providers.base.TranscriptionOptions`.

An ``error`` is ``{"type", "message", "param", "code", "headers"}`` where
``type`` names a class of :mod:`enclave.errors`; the client raises the same
class, so a 429 with ``Retry-After`` or a 400 naming ``param`` reaches the user
exactly as an in-process provider's would.
"""

from __future__ import annotations

from typing import Any

import orjson

from enclave import errors
from enclave.errors import EnclaveError, ProviderError
from enclave.providers.base import (
    Capabilities,
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
    Transcript,
    TranscriptionOptions,
    TranscriptSegment,
    TranscriptWord,
    Usage,
)

PROTOCOL_VERSION = 1
PREFIX = "/runner/v1"
NDJSON = "application/x-ndjson"


# -- generation requests ---------------------------------------------------------


def request_to_wire(request: GenerationRequest) -> dict[str, Any]:
    s = request.sampling
    return {
        "model": request.model,
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "name": m.name,
                "tool_calls": [[c.id, c.name, c.arguments] for c in m.tool_calls],
                "tool_call_id": m.tool_call_id,
            }
            for m in request.messages
        ],
        "prompt": request.prompt,
        "suffix": request.suffix,
        "sampling": {
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stop": list(s.stop),
            "seed": s.seed,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
        },
        "response_format": {
            "kind": request.response_format.kind,
            "schema": request.response_format.schema,
            "name": request.response_format.name,
        },
        "tools": [
            {"name": t.name, "description": t.description, "parameters": t.parameters}
            for t in request.tools
        ],
        "tool_choice": request.tool_choice,
        "tenant": request.tenant,
    }


def request_from_wire(data: dict[str, Any]) -> GenerationRequest:
    sampling = dict(data.get("sampling") or {})
    sampling["stop"] = tuple(sampling.get("stop") or ())
    return GenerationRequest(
        model=data["model"],
        messages=tuple(
            ChatMessage(
                role=m["role"],
                content=m.get("content") or "",
                name=m.get("name"),
                tool_calls=tuple(ToolCall(*call) for call in m.get("tool_calls") or ()),
                tool_call_id=m.get("tool_call_id"),
            )
            for m in data.get("messages") or ()
        ),
        prompt=data.get("prompt"),
        suffix=data.get("suffix"),
        sampling=SamplingParams(**sampling),
        response_format=ResponseFormat(**(data.get("response_format") or {})),
        tools=tuple(ToolSpec(**tool) for tool in data.get("tools") or ()),
        tool_choice=data.get("tool_choice", "auto"),
        tenant=data.get("tenant", "anonymous"),
    )


# -- generation events -----------------------------------------------------------


def event_to_wire(event: GenerationEvent) -> dict[str, Any]:
    if isinstance(event, TextDelta):
        return {"text": event.text}
    if isinstance(event, ToolCallDelta):
        call = event.call
        return {
            "tool_call": {
                "index": event.index,
                "id": call.id,
                "name": call.name,
                "arguments": call.arguments,
            }
        }
    usage = event.usage
    return {
        "finished": {
            "finish_reason": event.finish_reason,
            "usage": [usage.prompt_tokens, usage.completion_tokens],
        }
    }


def event_from_wire(data: dict[str, Any]) -> GenerationEvent:
    """One event line; an ``error`` line raises the error it carries."""
    if "text" in data:
        return TextDelta(data["text"])
    if "tool_call" in data:
        call = data["tool_call"]
        return ToolCallDelta(call["index"], ToolCall(call["id"], call["name"], call["arguments"]))
    if "finished" in data:
        finished = data["finished"]
        return Finished(finished["finish_reason"], Usage(*finished["usage"]))
    if "error" in data:
        raise error_from_wire(data["error"])
    raise ProviderError(f"The runner sent an unknown event: {sorted(data)}")


class EventLines:
    """The event lines of a generate stream, read in chunks of any size.

    The client reads whatever bytes have arrived (often several events, or part
    of one) instead of awaiting one line at a time: one read and one batch of
    ``orjson.loads`` per network read, the incomplete last line kept for the next.
    """

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The events completed by ``data``, in order."""
        if self._partial:
            data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [orjson.loads(line) for line in lines if line.strip()]


# -- errors ----------------------------------------------------------------------


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    if not isinstance(exc, EnclaveError):
        return {"type": "ProviderError", "message": f"The engine failed: {type(exc).__name__}"}
    return {
        "type": type(exc).__name__,
        "message": exc.message,
        "param": exc.param,
        "code": exc.code,
        "headers": exc.headers,
    }


def _error_classes() -> dict[str, type[EnclaveError]]:
    found: dict[str, type[EnclaveError]] = {}
    pending: list[type[EnclaveError]] = [EnclaveError]
    while pending:
        cls = pending.pop()
        if cls.__module__ == errors.__name__:
            found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def error_from_wire(data: dict[str, Any]) -> EnclaveError:
    """The error a runner reported, as the same class of :mod:`enclave.errors`."""
    cls = _error_classes().get(str(data.get("type")), ProviderError)
    # Constructors differ (ModelNotFound takes a model id, RateLimited a delay);
    # the wire carries the finished message, code and headers, so set them directly.
    exc = cls.__new__(cls)
    EnclaveError.__init__(
        exc,
        str(data.get("message") or "The runner failed."),
        param=data.get("param"),
        code=data.get("code"),
        headers=dict(data.get("headers") or {}),
    )
    if isinstance(exc, errors.RateLimited):
        exc.retry_after = int(exc.headers.get("Retry-After", "1"))
    return exc


# -- transcription ---------------------------------------------------------------


def options_to_wire(options: TranscriptionOptions) -> dict[str, Any]:
    return {
        "task": options.task,
        "language": options.language,
        "prompt": options.prompt,
        "temperature": options.temperature,
        "word_timestamps": options.word_timestamps,
    }


def options_from_wire(data: dict[str, Any]) -> TranscriptionOptions:
    return TranscriptionOptions(**data)


def transcript_to_wire(transcript: Transcript) -> dict[str, Any]:
    return {
        "text": transcript.text,
        "language": transcript.language,
        "duration": transcript.duration,
        "segments": [
            [s.id, s.start, s.end, s.text, [[w.word, w.start, w.end] for w in s.words]]
            for s in transcript.segments
        ],
    }


def transcript_from_wire(data: dict[str, Any]) -> Transcript:
    return Transcript(
        text=data["text"],
        language=data["language"],
        duration=float(data["duration"]),
        segments=tuple(
            TranscriptSegment(i, start, end, text, tuple(TranscriptWord(*w) for w in words))
            for i, start, end, text, words in data["segments"]
        ),
    )


# -- model cards -----------------------------------------------------------------


def card_to_wire(card: ModelCard) -> dict[str, Any]:
    c = card.capabilities
    return {
        "id": card.id,
        "provider": card.provider,
        "created": card.created,
        "capabilities": {
            "chat": c.chat,
            "completion": c.completion,
            "embeddings": c.embeddings,
            "tools": c.tools,
            "json_schema": c.json_schema,
            "context_length": c.context_length,
            "embedding_dimensions": c.embedding_dimensions,
            "transcription": c.transcription,
        },
    }


def card_from_wire(data: dict[str, Any]) -> ModelCard:
    return ModelCard(
        id=data["id"],
        provider=data["provider"],
        capabilities=Capabilities(**data["capabilities"]),
        created=int(data.get("created") or 0),
    )
