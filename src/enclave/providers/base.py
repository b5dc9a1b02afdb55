"""The provider interface: what the core needs from anything that serves models.

A :class:`Provider` lists its models with their capabilities, generates (always
as a stream of :data:`GenerationEvent`), embeds, and reports its health. The
embedded llama.cpp engine and the sentence-transformers embedder implement it
here; OpenAI-compatible upstreams (vLLM, Ollama, cloud) implement it next.

Generation is two-phase on purpose. ``await provider.generate(request)``
*admits* the request: it validates it, reserves capacity (or raises
``QueueFull``) and, for an upstream, gets as far as the response headers.
Everything that can fail with a clean HTTP status fails there. Only then does
the caller iterate the returned :class:`GenerationStream`, so a streaming
response starts with status 200 only once the request is known to be viable,
and a router can still fall back to another provider before the first byte.
Closing the stream (``aclose``) cancels the generation.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
EmbedPriority = Literal["interactive", "bulk"]
"""``interactive`` embeddings (a query) go before ``bulk`` ones (ingestion) where a
provider shares one engine between them."""
FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI transports it


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str = ""
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """``kind`` is ``text``, ``json_object`` or ``json_schema`` (then ``schema`` is set)."""

    kind: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation, either chat (``messages``) or raw completion (``prompt``).

    ``tool_choice`` is ``"auto"``, ``"none"``, ``"required"`` or a function name.
    ``tenant`` identifies who shares the queue fairly (usually the API key).
    """

    model: str
    messages: Sequence[ChatMessage] = ()
    prompt: str | None = None
    suffix: str | None = None  # with ``prompt``: fill in the middle (the text after the cursor)
    sampling: SamplingParams = SamplingParams()
    response_format: ResponseFormat = ResponseFormat()
    tools: Sequence[ToolSpec] = ()
    tool_choice: str = "auto"
    tenant: str = "anonymous"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    call: ToolCall


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: FinishReason
    usage: Usage


GenerationEvent = TextDelta | ToolCallDelta | Finished


class GenerationStream(abc.ABC):
    """An admitted generation. Iterate it for events; ``aclose`` cancels it."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[GenerationEvent]: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    chat: bool = False
    completion: bool = False
    embeddings: bool = False
    tools: bool = False
    json_schema: bool = False
    context_length: int | None = None
    embedding_dimensions: int | None = None
    transcription: bool = False


@dataclass(frozen=True, slots=True)
class ModelCard:
    """A model as the registry and ``/v1/models`` see it."""

    id: str
    provider: str
    capabilities: Capabilities
    created: int = 0


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class TranscriptionOptions:
    """How to transcribe: ``task`` ``translate`` renders the speech in English."""

    task: Literal["transcribe", "translate"] = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    word_timestamps: bool = False


@dataclass(frozen=True, slots=True)
class TranscriptWord:
    word: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    id: int
    start: float
    end: float
    text: str
    words: tuple[TranscriptWord, ...] = ()


@dataclass(frozen=True, slots=True)
class Transcript:
    """What speech recognition heard; ``duration`` is the audio's length in seconds."""

    text: str
    language: str
    duration: float
    segments: tuple[TranscriptSegment, ...] = ()


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str = ""
    queue_depth: int = 0


class Provider(abc.ABC):
    """Anything that serves models. One module per backend implements this."""

    name: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load models or open connections. Called once before serving."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything ``start`` acquired."""

    @abc.abstractmethod
    def models(self) -> list[ModelCard]: ...

    async def generate(self, request: GenerationRequest) -> GenerationStream:
        """Admit a generation (see the module docstring) and return its stream."""
        from enclave.errors import InvalidRequest

        raise InvalidRequest(f"The model '{request.model}' does not generate text.", param="model")

    async def embed(
        self, model: str, inputs: Sequence[str], *, priority: EmbedPriority = "interactive"
    ) -> EmbeddingResult:
        from enclave.errors import InvalidRequest

        raise InvalidRequest(f"The model '{model}' does not produce embeddings.", param="model")

    async def transcribe(
        self, model: str, audio: bytes, options: TranscriptionOptions
    ) -> Transcript:
        """Speech to text from an encoded audio file (any format ffmpeg reads)."""
        from enclave.errors import InvalidRequest

        raise InvalidRequest(f"The model '{model}' does not transcribe audio.", param="model")

    @abc.abstractmethod
    async def health(self) -> Health: ...

    def is_busy(self) -> bool:
        """True when the provider is at capacity, so idle ones should be tried first."""
        return False

    def describe(self) -> dict[str, Any]:
        """Backend-specific state for operators (slots, load, counters)."""
        return {}
