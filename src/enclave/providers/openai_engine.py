"""An OpenAI-compatible inference server as a :class:`Provider` that generates.

:class:`OpenAIUpstream` relays a client's bytes to an upstream and back; a
runner cannot serve that, because the runner protocol carries
:data:`GenerationEvent` values. :class:`OpenAIEngine` speaks to one
OpenAI-compatible server (``llama-server``, ``vllm serve``) the other way
round: it turns a :class:`GenerationRequest` into a streamed
``/v1/chat/completions`` (or ``/v1/completions`` for a raw prompt) body and
the server's server-sent events back into events:

* ``delta.content`` (``text`` for completions) becomes :class:`TextDelta`;
* ``delta.tool_calls`` fragments are joined by ``index`` and each complete
  call becomes one :class:`ToolCallDelta` before the end, as the embedded
  engine emits them;
* ``finish_reason`` and the ``usage`` chunk (``stream_options.include_usage``)
  become the closing :class:`Finished`;
* an ``error`` object in the stream, a stream that ends before a finish
  reason, and a connection that breaks raise :class:`ProviderError` while the
  stream is iterated, which the runner passes on as an error line.

:class:`ChunkTranslator` does the translation without any I/O, so it is tested
on its own. Admission (``await generate()``) refuses a prompt longer than the
context can hold (``input_limits.chars_per_token``), a full queue (429), and
returns once the server has answered with its headers; ``aclose()`` closes
the HTTP connection, which is how both servers learn to stop generating.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import orjson

from enclave.errors import (
    EnclaveError,
    InvalidRequest,
    ModelNotFound,
    ProviderError,
    QueueFull,
    UpstreamUnavailable,
)
from enclave.providers.base import (
    Capabilities,
    EmbeddingResult,
    EmbedPriority,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    GenerationStream,
    Health,
    ModelCard,
    Provider,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)

MAX_EMBED_INPUTS = 2048
PROBE_TIMEOUT_S = 120.0
READ_BUFFER_BYTES = 4 * 1024**2
# The server's statuses that are the request's fault, passed on as a 400.
CLIENT_ERRORS = frozenset({400, 413, 422})
FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


# -- the request ---------------------------------------------------------------


def chat_body(request: GenerationRequest, upstream_model: str) -> dict[str, Any]:
    """The streamed OpenAI request for ``request``: chat, or completion for a prompt."""
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": upstream_model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if request.prompt is not None:
        body["prompt"] = request.prompt
        if request.suffix is not None:
            body["suffix"] = request.suffix
    else:
        body["messages"] = [_message(message) for message in request.messages]
    if sampling.max_tokens is not None:
        body["max_tokens"] = sampling.max_tokens
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.presence_penalty:
        body["presence_penalty"] = sampling.presence_penalty
    if sampling.frequency_penalty:
        body["frequency_penalty"] = sampling.frequency_penalty
    form = request.response_format
    if form.kind == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif form.kind == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": form.name or "response", "schema": form.schema or {}},
        }
    if request.tools and request.prompt is None:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            }
            for tool in request.tools
        ]
        choice = request.tool_choice
        body["tool_choice"] = (
            choice
            if choice in ("auto", "none", "required")
            else {"type": "function", "function": {"name": choice}}
        )
    return body


def _message(message: Any) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name is not None:
        wire["name"] = message.name
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
        if not message.content:
            wire["content"] = None
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    return wire


# -- the answer ----------------------------------------------------------------


def sse_data(line: bytes) -> bytes | None:
    """The payload of one SSE ``data:`` line; None for other lines (comments, blanks)."""
    line = line.rstrip(b"\r\n")
    if not line.startswith(b"data:"):
        return None
    return line[5:].lstrip(b" ")


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or error)
    return str(error)


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ChunkTranslator:
    """OpenAI stream chunks (decoded JSON) in, :data:`GenerationEvent` values out.

    ``feed`` takes one chunk and returns the events it completes; ``finish``
    returns the closing events once the stream is done (``[DONE]``, or the end
    of the body after a finish reason). No I/O, so tests feed it directly.
    """

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.text_pieces = 0
        self._calls: dict[int, _PendingCall] = {}

    def feed(self, chunk: Any) -> list[GenerationEvent]:
        if not isinstance(chunk, dict):
            raise ProviderError(f"{self.engine} sent a malformed stream chunk.")
        if "error" in chunk:
            message = _error_message(chunk["error"])
            raise ProviderError(f"{self.engine} failed mid-stream: {message}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        events: list[GenerationEvent] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if text:
                self.text_pieces += 1
                events.append(TextDelta(str(text)))
            if isinstance(delta, dict):
                for fragment in delta.get("tool_calls") or ():
                    self._add_call_fragment(fragment)
            reason = choice.get("finish_reason")
            if reason:
                self.finish_reason = FINISH_REASONS.get(str(reason), "stop")
        return events

    def _add_call_fragment(self, fragment: Any) -> None:
        if not isinstance(fragment, dict):
            return
        pending = self._calls.setdefault(int(fragment.get("index") or 0), _PendingCall())
        if fragment.get("id"):
            pending.id = str(fragment["id"])
        function = fragment.get("function") or {}
        if function.get("name"):
            pending.name += str(function["name"])
        if function.get("arguments"):
            pending.arguments.append(str(function["arguments"]))

    def finish(self) -> list[GenerationEvent]:
        """The tool calls and :class:`Finished`; raises if the stream never finished."""
        if self.finish_reason is None:
            raise ProviderError(f"{self.engine} ended the stream before it finished.")
        events: list[GenerationEvent] = []
        for position, index in enumerate(sorted(self._calls)):
            pending = self._calls[index]
            call_id = pending.id or f"call_{index}"
            call = ToolCall(call_id, pending.name, "".join(pending.arguments) or "{}")
            events.append(ToolCallDelta(position, call))
        reason = self.finish_reason
        if events and reason == "stop":
            reason = "tool_calls"
        usage = self.usage or Usage(prompt_tokens=0, completion_tokens=self.text_pieces)
        events.append(Finished(reason, usage))
        return events


class _ServerStream(GenerationStream):
    """One admitted generation: the server's SSE body, translated as it arrives."""

    def __init__(self, engine: OpenAIEngine, response: aiohttp.ClientResponse) -> None:
        self._engine = engine
        self._response = response
        self._released = False

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[GenerationEvent]:
        translator = ChunkTranslator(self._engine.engine)
        try:
            async for line in self._response.content:
                data = sse_data(line)
                if data is None or not data:
                    continue
                if data == b"[DONE]":
                    break
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise ProviderError(
                        f"{self._engine.engine} sent a malformed stream chunk."
                    ) from None
                for event in translator.feed(chunk):
                    yield event
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise ProviderError(
                f"{self._engine.engine} broke off the stream ({type(exc).__name__})."
            ) from None
        for event in translator.finish():
            yield event
        self._release(abort=False)

    def _release(self, *, abort: bool) -> None:
        if self._released:
            return
        self._released = True
        self._engine.in_flight -= 1
        if abort:
            self._response.close()  # the server sees the connection go and stops
        else:
            self._response.release()

    async def aclose(self) -> None:
        self._release(abort=not self._response.content.at_eof())


# -- the provider --------------------------------------------------------------


class OpenAIEngine(Provider):
    """One model served by an OpenAI-compatible server at ``base_url`` (ending in /v1).

    ``capabilities`` are what the server was found to answer (:meth:`probe`):
    chat (a one-token chat completion) and embeddings (a one-input embedding).
    """

    def __init__(
        self,
        name: str,
        model: str,
        *,
        base_url: str,
        engine: str = "openai",
        upstream_model: str | None = None,
        context_length: int | None = None,
        chars_per_token: int = 8,
        queue_size: int = 64,
        health_path: str = "/health",
        read_timeout_s: float = 600.0,
    ) -> None:
        self.name = name
        self.model = model
        self.engine = engine
        self.base_url = base_url.rstrip("/")
        self.upstream_model = upstream_model or model
        self.chars_per_token = chars_per_token
        self.queue_size = queue_size
        self.health_path = health_path
        self.read_timeout_s = read_timeout_s
        self.capabilities = Capabilities(
            chat=True, completion=True, tools=True, json_schema=True, context_length=context_length
        )
        self.in_flight = 0
        self.generations = 0
        self.failures = 0
        self._created = int(time.time())
        self._session: aiohttp.ClientSession | None = None

    @property
    def server_url(self) -> str:
        """The server's root (``base_url`` without ``/v1``), where ``/health`` is."""
        return self.base_url.removesuffix("/v1")

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
            trust_env=False,
            read_bufsize=READ_BUFFER_BYTES,  # one SSE line holds a whole chunk
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def models(self) -> list[ModelCard]:
        return [ModelCard(self.model, self.name, self.capabilities, self._created)]

    def _session_or_fail(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamUnavailable(f"The {self.engine} engine of '{self.model}' is not started.")
        return self._session

    def _check_model(self, model: str) -> None:
        if model != self.model:
            raise ModelNotFound(model)

    @property
    def max_input_chars(self) -> int | None:
        context = self.capabilities.context_length
        return None if context is None else context * self.chars_per_token

    async def probe(self) -> Capabilities:
        """Find what the server answers to (chat, embeddings) and its context length."""
        session = self._session_or_fail()
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        chat = await self._answers(
            session,
            "/chat/completions",
            {
                "model": self.upstream_model,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 1,
                "temperature": 0,
            },
            timeout,
        )
        embeddings = await self._answers(
            session, "/embeddings", {"model": self.upstream_model, "input": ["probe"]}, timeout
        )
        context = self.capabilities.context_length
        try:
            async with session.get(self.base_url + "/models", timeout=timeout) as response:
                listing = orjson.loads(await response.read()) if response.status == 200 else {}
            for card in listing.get("data") or ():
                if isinstance(card, dict) and card.get("max_model_len"):  # vLLM's field
                    context = int(card["max_model_len"])
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError, ValueError):
            pass
        self.capabilities = replace(
            self.capabilities,
            chat=chat,
            completion=chat,
            tools=chat,
            json_schema=chat,
            embeddings=embeddings,
            context_length=context,
        )
        return self.capabilities

    async def _answers(
        self,
        session: aiohttp.ClientSession,
        endpoint: str,
        body: dict[str, Any],
        timeout: aiohttp.ClientTimeout,
    ) -> bool:
        try:
            async with session.post(
                self.base_url + endpoint, data=orjson.dumps(body), timeout=timeout
            ) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def generate(self, request: GenerationRequest) -> GenerationStream:
        self._check_model(request.model)
        if not self.capabilities.chat:
            return await super().generate(request)
        limit = self.max_input_chars
        chars = (
            len(request.prompt)
            if request.prompt is not None
            else sum(len(m.content) for m in request.messages)
        )
        if limit is not None and chars > limit:
            raise InvalidRequest(
                f"The prompt is {chars} characters; the model's context of "
                f"{self.capabilities.context_length} tokens holds at most {limit} "
                "(input_limits.chars_per_token).",
                param="messages" if request.prompt is None else "prompt",
                code="context_length_exceeded",
            )
        if self.in_flight >= self.queue_size:
            raise QueueFull(f"The queue of '{self.model}' is full. Retry later.", retry_after=1)
        session = self._session_or_fail()
        endpoint = "/completions" if request.prompt is not None else "/chat/completions"
        body = chat_body(request, self.upstream_model)
        self.in_flight += 1
        try:
            response = await session.post(
                self.base_url + endpoint,
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=10, sock_read=self.read_timeout_s
                ),
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.in_flight -= 1
            self.failures += 1
            raise UpstreamUnavailable(
                f"The {self.engine} engine of '{self.model}' is unreachable ({type(exc).__name__})."
            ) from None
        except BaseException:
            self.in_flight -= 1
            raise
        if response.status != 200:
            self.in_flight -= 1
            raise await self._refusal(response)
        self.generations += 1
        return _ServerStream(self, response)

    async def _refusal(self, response: aiohttp.ClientResponse) -> EnclaveError:
        """The error for a non-200 answer; the response is released."""
        try:
            raw = await response.read()
            message = _error_message(orjson.loads(raw).get("error")) if raw else ""
        except (aiohttp.ClientError, orjson.JSONDecodeError, AttributeError, TimeoutError):
            message = ""
        finally:
            response.release()
        status = response.status
        if status in CLIENT_ERRORS:
            return InvalidRequest(message or f"The {self.engine} engine refused the request.")
        if status == 429:
            return QueueFull(f"The {self.engine} engine is busy. Retry later.", retry_after=1)
        self.failures += 1
        detail = f": {message}" if message else ""
        return UpstreamUnavailable(f"The {self.engine} engine answered HTTP {status}{detail}.")

    async def embed(
        self, model: str, inputs: Sequence[str], *, priority: EmbedPriority = "interactive"
    ) -> EmbeddingResult:
        self._check_model(model)
        if not self.capabilities.embeddings:
            return await super().embed(model, inputs, priority=priority)
        if not inputs:
            raise InvalidRequest("input must not be empty.", param="input")
        if len(inputs) > MAX_EMBED_INPUTS:
            raise InvalidRequest(f"At most {MAX_EMBED_INPUTS} inputs per request.", param="input")
        if self.in_flight >= self.queue_size:
            raise QueueFull(f"The queue of '{self.model}' is full. Retry later.", retry_after=1)
        cap = self.max_input_chars
        texts = [text[:cap] for text in inputs] if cap is not None else list(inputs)
        session = self._session_or_fail()
        self.in_flight += 1
        try:
            async with session.post(
                self.base_url + "/embeddings",
                data=orjson.dumps({"model": self.upstream_model, "input": texts}),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.read_timeout_s),
            ) as response:
                if response.status != 200:
                    raise await self._refusal(response)
                answer = orjson.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.failures += 1
            raise UpstreamUnavailable(
                f"The {self.engine} engine of '{self.model}' is unreachable ({type(exc).__name__})."
            ) from None
        finally:
            self.in_flight -= 1
        try:
            rows = sorted(answer["data"], key=lambda row: int(row.get("index", 0)))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError):
            raise ProviderError(f"The {self.engine} engine sent malformed embeddings.") from None
        if len(vectors) != len(texts):
            raise ProviderError(f"The {self.engine} engine sent {len(vectors)} embeddings.")
        usage = answer.get("usage") or {}
        return EmbeddingResult(vectors, int(usage.get("prompt_tokens") or 0))

    async def health(self) -> Health:
        if self._session is None:
            return Health(ok=False, detail="not started")
        try:
            async with self._session.get(
                self.server_url + self.health_path, timeout=aiohttp.ClientTimeout(total=3)
            ) as response:
                ok = response.status == 200
                detail = "" if ok else f"{self.engine} health answered HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, detail = False, f"{self.engine} unreachable ({type(exc).__name__})"
        return Health(ok=ok, detail=detail, queue_depth=self.in_flight)

    def queue_depth(self) -> dict[str, int]:
        return {self.model: 0}  # the server queues internally; in flight is counted by the host

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "base_url": self.base_url,
            "in_flight": self.in_flight,
            "generations": self.generations,
            "failures": self.failures,
        }
