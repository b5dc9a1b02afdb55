"""Which provider serves which model id.

Built from ``settings.providers``: each entry's ``type`` picks the backend
module through :data:`PROVIDER_TYPES`, the same way a third-party backend
would be registered. Clients may name a model bare (``smollm2-135m``),
qualified by provider (``local/smollm2-135m``), or as ``default``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from enclave.errors import ConfigError, ModelNotFound
from enclave.providers.base import ModelCard, Provider
from enclave.providers.builtin import resolve_model_path
from enclave.settings import ProviderConfig, Settings

log = logging.getLogger(__name__)


def _llamacpp(config: ProviderConfig, settings: Settings) -> Provider:
    from enclave.providers.llamacpp import LlamaCppProvider

    return LlamaCppProvider(config.name, config.models, settings.runner)


def _sentence_transformers(config: ProviderConfig, settings: Settings) -> Provider:
    from enclave.providers.sentence_transformers import SentenceTransformersProvider

    return SentenceTransformersProvider(config.name, config.models, settings.runner.queue_size)


def _openai(config: ProviderConfig, settings: Settings) -> Provider:
    from enclave.providers.openai_upstream import OpenAIUpstream

    return OpenAIUpstream(config)


PROVIDER_TYPES: dict[str, Callable[[ProviderConfig, Settings], Provider]] = {
    "llamacpp": _llamacpp,
    "sentence-transformers": _sentence_transformers,
    "openai": _openai,
}


def check_model_files(settings: Settings) -> list[str]:
    """Problems with the configured model files, one line each, without loading any."""
    problems = []
    for provider in settings.providers:
        for model in provider.models:
            if model.path is None:
                continue
            try:
                resolve_model_path(model.path)
            except ConfigError as exc:
                problems.append(f"providers.{provider.name}.models.{model.name}: {exc}")
    return problems


class ModelRegistry:
    """Owns the providers' lifecycle and resolves model ids to them."""

    def __init__(self, providers: list[Provider], default_model: str) -> None:
        self.providers = providers
        self.default_model = default_model
        self._by_model: dict[str, tuple[Provider, ModelCard]] = {}
        self.started = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        providers = [PROVIDER_TYPES[config.type](config, settings) for config in settings.providers]
        return cls(providers, settings.default_model)

    async def start(self) -> None:
        for provider in self.providers:
            await provider.start()
        self._index()
        self.started = True

    async def close(self) -> None:
        await asyncio.gather(*(provider.close() for provider in self.providers))

    def _index(self) -> None:
        self._by_model.clear()
        for provider in self.providers:
            for card in provider.models():
                self._by_model.setdefault(card.id, (provider, card))
                self._by_model[f"{provider.name}/{card.id}"] = (provider, card)

    def cards(self) -> list[ModelCard]:
        seen: dict[str, ModelCard] = {}
        for _provider, card in self._by_model.values():
            seen.setdefault(card.id, card)
        return list(seen.values())

    def resolve(self, model: str) -> tuple[Provider, ModelCard]:
        """Return the provider and card for a client's model id, or raise 404."""
        name = self.default_model if model == "default" else model
        try:
            return self._by_model[name]
        except KeyError:
            raise ModelNotFound(model) from None
