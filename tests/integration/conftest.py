"""Integration fixtures: the real llama.cpp provider, driven on one event loop per module."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from enclave.providers.llamacpp import LlamaCppProvider
from enclave.settings import ModelConfig, RunnerConfig

T = TypeVar("T")

SMOLLM = ModelConfig(name="smollm2-135m", path="builtin:smollm2", n_ctx=2048)


class Loop:
    """Runs coroutines on one long-lived event loop (the provider's workers live there)."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coroutine)

    def close(self) -> None:
        self._runner.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    runner = Loop()
    yield runner
    runner.close()


def start_provider(loop: Loop, **runner: Any) -> LlamaCppProvider:
    provider = LlamaCppProvider("local", [SMOLLM], RunnerConfig(**runner))
    loop.run(provider.start())
    return provider


@pytest.fixture(scope="module")
def llama(loop: Loop) -> Iterator[LlamaCppProvider]:
    provider = start_provider(loop, slots=2)
    yield provider
    loop.run(provider.close())
