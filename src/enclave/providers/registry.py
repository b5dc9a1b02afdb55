"""The configured providers and their lifecycle.

Built from ``settings.providers``: each entry's ``type`` picks the backend
module through :data:`PROVIDER_TYPES`, the same way a third-party backend
would be registered. Which provider serves a requested model id is decided
by :class:`enclave.gateway.routing.RoutingTable`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from enclave.errors import ConfigError
from enclave.providers.base import Provider
from enclave.providers.builtin import resolve_model_path
from enclave.settings import ProviderConfig, Settings

log = logging.getLogger(__name__)


def _llamacpp(config: ProviderConfig, settings: Settings) -> Provider:
    from enclave.providers.llamacpp import LlamaCppProvider

    return LlamaCppProvider(
        config.name,
        config.models,
        settings.runner,
        chars_per_token=settings.input_limits.chars_per_token,
    )


def _sentence_transformers(config: ProviderConfig, settings: Settings) -> Provider:
    from enclave.providers.sentence_transformers import SentenceTransformersProvider
    from enclave.runners.cpu import embed_dtype, read_cpu_flags

    return SentenceTransformersProvider(
        config.name,
        config.models,
        settings.runner.queue_size,
        chars_per_token=settings.input_limits.chars_per_token,
        dtype=embed_dtype(read_cpu_flags(), settings.runner.embed_dtype),
    )


def _whisper(config: ProviderConfig, settings: Settings) -> Provider:
    from enclave.providers.whisper import WhisperProvider

    return WhisperProvider(
        config.name, config.models, settings.runner.queue_size, threads=settings.runner.threads or 0
    )


def _openai(config: ProviderConfig, settings: Settings) -> Provider:
    from enclave.providers.openai_upstream import OpenAIUpstream

    return OpenAIUpstream(config)


def _in_runner(config: ProviderConfig, settings: Settings) -> Provider:
    from enclave.providers.runner_client import RunnerProvider
    from enclave.runners.supervisor import LocalRunner

    runner = LocalRunner(
        config.name,
        [config],
        settings.runner,
        settings.input_limits,
        log_level=settings.log_level,
    )
    return RunnerProvider(config.name, runner, restart_wait_s=settings.runner.restart_wait_s)


PROVIDER_TYPES: dict[str, Callable[[ProviderConfig, Settings], Provider]] = {
    "llamacpp": _llamacpp,
    "sentence-transformers": _sentence_transformers,
    "whisper": _whisper,
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
    """Owns the providers' lifecycle. Model ids are resolved by the gateway's routing table."""

    def __init__(self, providers: list[Provider], default_model: str) -> None:
        self.providers = providers
        self.default_model = default_model
        self.started = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """Build the configured providers. With ``runner.mode: process`` each embedded
        provider runs in its own supervised runner process and is reached through a
        :class:`~enclave.providers.runner_client.RunnerProvider`. A missing model file
        is a :class:`ConfigError` here, before any runner starts."""
        problems = check_model_files(settings)
        if problems:
            raise ConfigError("; ".join(problems))
        providers = [
            _in_runner(config, settings)
            if config.is_local and settings.runner.mode == "process"
            else PROVIDER_TYPES[config.type](config, settings)
            for config in settings.providers
        ]
        return cls(providers, settings.default_model)

    async def start(self) -> None:
        # Together: each runner loads its models in its own process.
        await asyncio.gather(*(provider.start() for provider in self.providers))
        self.started = True

    async def close(self) -> None:
        await asyncio.gather(*(provider.close() for provider in self.providers))
