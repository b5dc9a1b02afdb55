"""The inference service: generation and embeddings on the embedded providers.

The gateway (:mod:`enclave.gateway.service`) routes a request by
classification and passes the chosen local provider and model in. This layer
admits the request to it and wraps the resulting stream so that time to first
token and token counts reach the metrics whether the client reads to the end
or leaves.
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
    Finished,
    GenerationEvent,
    GenerationRequest,
    GenerationStream,
    ModelCard,
    Provider,
    Usage,
)
from enclave.providers.registry import ModelRegistry


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
    def __init__(self, registry: ModelRegistry, metrics: Metrics) -> None:
        self.registry = registry
        self.metrics = metrics

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
    ) -> EmbeddingResult:
        """Embed ``inputs`` on ``provider``; ``dimensions``, if given, must be the model's own."""
        native = card.capabilities.embedding_dimensions
        if dimensions is not None and dimensions != native:
            raise InvalidRequest(
                f"The model '{card.id}' produces {native} dimensions and cannot change that.",
                param="dimensions",
            )
        result = await provider.embed(card.id, inputs)
        self.metrics.tokens.labels(card.id, "in").inc(result.prompt_tokens)
        return result

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
