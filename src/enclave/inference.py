"""The inference service: generation and embeddings on the embedded providers.

The gateway (:mod:`enclave.gateway.service`) routes a request by
classification and passes the chosen local provider and model in. This layer
admits the request to it and wraps the resulting stream so that time to first
token and token counts reach the metrics whether the client reads to the end
or leaves.

Embedding requests are bounded here, before any provider sees them: the
characters that can reach the model (each input cut to its context times
``input_limits.chars_per_token``), summed over the inputs, must stay within
``input_limits.max_embedding_chars``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from enclave.errors import InvalidRequest
from enclave.metrics import Metrics
from enclave.providers.base import (
    EmbeddingResult,
    EmbedPriority,
    Finished,
    GenerationEvent,
    GenerationRequest,
    GenerationStream,
    ModelCard,
    Provider,
    Usage,
)
from enclave.providers.registry import ModelRegistry
from enclave.settings import InputLimitsConfig

# Requests with more inputs than this are bulk work unless the caller says otherwise.
INTERACTIVE_INPUTS = 32


class Generation:
    """An admitted generation with its model card; iterate for events."""

    def __init__(
        self, stream: GenerationStream, card: ModelCard, metrics: Metrics, admitted: float
    ) -> None:
        self.stream = stream
        self.card = card
        self._metrics = metrics
        self._admitted = admitted
        self.usage: Usage | None = None  # set when the generation finishes

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[GenerationEvent]:
        first = True
        try:
            async for event in self.stream:
                if first:
                    first = False
                    self._metrics.time_to_first_token.labels(self.card.id).observe(
                        time.monotonic() - self._admitted
                    )
                if isinstance(event, Finished):
                    self.usage = event.usage
                    self._metrics.tokens.labels(self.card.id, "in").inc(event.usage.prompt_tokens)
                    self._metrics.tokens.labels(self.card.id, "out").inc(
                        event.usage.completion_tokens
                    )
                yield event
        finally:
            await self.stream.aclose()

    async def aclose(self) -> None:
        await self.stream.aclose()


class InferenceService:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        limits: InputLimitsConfig | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.limits = limits or InputLimitsConfig()

    async def generate(
        self, request: GenerationRequest, provider: Provider, card: ModelCard
    ) -> Generation:
        """Admit a chat (``messages``) or text (``prompt``) generation on ``provider``.

        The gateway has already routed the request and checked the capability.
        """
        admitted = time.monotonic()
        stream = await provider.generate(replace(request, model=card.id))
        return Generation(stream, card, self.metrics, admitted)

    async def embed(
        self,
        inputs: Sequence[str],
        provider: Provider,
        card: ModelCard,
        *,
        dimensions: int | None = None,
        priority: EmbedPriority | None = None,
    ) -> EmbeddingResult:
        """Embed ``inputs`` on ``provider``; ``dimensions``, if given, must be the model's own.

        ``priority`` defaults to ``interactive`` for up to :data:`INTERACTIVE_INPUTS`
        inputs and ``bulk`` above.
        """
        native = card.capabilities.embedding_dimensions
        if dimensions is not None and dimensions != native:
            raise InvalidRequest(
                f"The model '{card.id}' produces {native} dimensions and cannot change that.",
                param="dimensions",
            )
        self.check_embedding_size(inputs, card)
        if priority is None:
            priority = "interactive" if len(inputs) <= INTERACTIVE_INPUTS else "bulk"
        result = await provider.embed(card.id, inputs, priority=priority)
        self.metrics.tokens.labels(card.id, "in").inc(result.prompt_tokens)
        return result

    def check_embedding_size(self, inputs: Sequence[str], card: ModelCard) -> None:
        """Refuse (400) a request whose inputs, each cut to the context, are too many characters."""
        context = card.capabilities.context_length
        per_input = context * self.limits.chars_per_token if context else None
        limit = self.limits.max_embedding_chars
        total = 0
        for text in inputs:
            if not isinstance(text, str):
                continue
            total += len(text) if per_input is None else min(len(text), per_input)
            if total > limit:
                raise InvalidRequest(
                    f"The inputs of this request are more than {limit} characters together "
                    f"(input_limits.max_embedding_chars; each input counts up to "
                    f"{per_input or 'all its'} characters). Send fewer or shorter inputs "
                    "per request.",
                    param="input",
                    code="embedding_request_too_large",
                )

    async def provider_status(self) -> list[dict[str, Any]]:
        """Health, models and backend state of every provider."""
        status = []
        for provider in self.registry.providers:
            health = await provider.health()
            status.append(
                {
                    "name": provider.name,
                    "healthy": health.ok,
                    "detail": health.detail,
                    "queue_depth": health.queue_depth,
                    "models": [card.id for card in provider.models()],
                    "state": provider.describe(),
                }
            )
        return status

    async def refresh_gauges(self) -> None:
        """Bring point-in-time gauges up to date (called when metrics are scraped)."""
        for provider in self.registry.providers:
            health = await provider.health()
            for card in provider.models():
                depth = getattr(provider, "queue_depth", None)
                value = depth().get(card.id, 0) if depth else health.queue_depth
                self.metrics.queue_depth.labels(card.id).set(value)
