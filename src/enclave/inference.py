"""The inference service: what ``/v1`` routes call to generate and embed.

It resolves the model, checks it can do what is asked, admits the request to
its provider, and wraps the resulting stream so that time to first token and
token counts reach the metrics whether the client reads to the end or leaves.
The gateway (:mod:`enclave.gateway.service`) routes by classification and
passes the chosen local provider in as ``target``.
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

    def list_models(self) -> list[ModelCard]:
        return self.registry.cards()

    def get_model(self, model: str) -> ModelCard:
        return self.registry.resolve(model)[1]

    async def generate(
        self, request: GenerationRequest, *, target: tuple[Provider, ModelCard] | None = None
    ) -> Generation:
        """Admit a chat (``messages``) or text (``prompt``) generation.

        ``target`` is the provider and model the gateway routed to; without it
        the model is looked up by name.
        """
        provider, card = target or self.registry.resolve(request.model)
        wants_chat = request.prompt is None
        if wants_chat and not card.capabilities.chat:
            raise InvalidRequest(f"The model '{card.id}' is not a chat model.", param="model")
        if not wants_chat and not card.capabilities.completion:
            raise InvalidRequest(
                f"The model '{card.id}' does not support text completions.", param="model"
            )
        admitted = time.monotonic()
        stream = await provider.generate(replace(request, model=card.id))
        return Generation(stream, card, self.metrics, admitted)

    async def embed(
        self,
        model: str,
        inputs: Sequence[str],
        *,
        dimensions: int | None = None,
        target: tuple[Provider, ModelCard] | None = None,
    ) -> tuple[ModelCard, EmbeddingResult]:
        """Embed ``inputs``; ``dimensions``, if given, must be the model's own."""
        provider, card = target or self.registry.resolve(model)
        if not card.capabilities.embeddings:
            raise InvalidRequest(
                f"The model '{card.id}' does not produce embeddings.", param="model"
            )
        native = card.capabilities.embedding_dimensions
        if dimensions is not None and dimensions != native:
            raise InvalidRequest(
                f"The model '{card.id}' produces {native} dimensions and cannot change that.",
                param="dimensions",
            )
        result = await provider.embed(card.id, inputs)
        self.metrics.tokens.labels(card.id, "in").inc(result.prompt_tokens)
        return card, result

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
