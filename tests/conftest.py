"""Shared fixtures. Unit tests use the scripted provider through an in-process client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from enclave.app import create_app
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings
from enclave.testing.scripted import ScriptedProvider

ADMIN_KEY = "ek-test-admin-key-0123456789abcdef"


@dataclass
class ScriptedApp:
    client: TestClient
    provider: ScriptedProvider
    settings: Settings

    def auth(self, key: str = ADMIN_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


def without_enclave_variables(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` less every ENCLAVE_* variable (a developer's exported ENCLAVE_HOME,
    ENCLAVE_URL, ENCLAVE_API_KEY... must not reach the code under test)."""
    return {name: value for name, value in environ.items() if not name.startswith("ENCLAVE_")}


def pytest_configure(config: pytest.Config) -> None:
    # Before any fixture, session-scoped servers included, reads the environment.
    for name in list(os.environ):
        if name.startswith("ENCLAVE_"):
            del os.environ[name]


@pytest.fixture(autouse=True)
def hermetic_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test: no ENCLAVE_* variable from the shell, and a temporary ENCLAVE_HOME,
    so nothing reads or writes ~/.local/share/enclave."""
    for name in list(os.environ):
        if name.startswith("ENCLAVE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path_factory.mktemp("enclave-home")))


@pytest.fixture
def enclave_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ENCLAVE_HOME in the environment, with every other ENCLAVE_* variable unset."""
    for name in list(os.environ):
        if name.startswith("ENCLAVE_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("ENCLAVE_HOME", str(home))
    return home


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", admin_key=ADMIN_KEY, max_body_bytes=64 * 1024)


@pytest.fixture
def scripted(settings: Settings) -> Iterator[ScriptedApp]:
    provider = ScriptedProvider()
    registry = ModelRegistry([provider], default_model="scripted")
    app = create_app(settings, registry=registry)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield ScriptedApp(client, provider, settings)
