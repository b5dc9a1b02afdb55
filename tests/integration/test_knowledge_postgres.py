"""The whole knowledge flow with database_url on Postgres: keys, jobs, pgvector, grounding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from enclave.app import create_app
from enclave.providers.registry import ModelRegistry
from enclave.testing.scripted import Script, ScriptedProvider
from tests.integration.conftest import fresh_database
from tests.unit.test_knowledge_api import LEAVE, KnowledgeApp, knowledge_settings


@pytest.fixture
def postgres_app(tmp_path: Path, postgres_uri: str) -> Iterator[KnowledgeApp]:
    settings = knowledge_settings(tmp_path)
    url = fresh_database(postgres_uri).replace("postgresql://", "postgresql+psycopg://", 1)
    settings.database_url = url
    provider = ScriptedProvider()
    app = create_app(settings, registry=ModelRegistry([provider], default_model="scripted"))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield KnowledgeApp(client, provider, tmp_path)


def test_knowledge_runs_on_postgres(postgres_app: KnowledgeApp) -> None:
    kapp = postgres_app
    services = kapp.client.app.state.services  # type: ignore[attr-defined]
    assert type(services.knowledge.store).__name__ == "PostgresStore"
    kapp.create("hr")
    document = kapp.add("hr", "leave.md", LEAVE)
    assert document["status"] == "indexed" and document["chunks"] >= 1
    assert "480 days" in kapp.query("hr", "parental leave days per child")["data"][0]["text"]
    kapp.provider.script = Script(words=["Employees get 480 days of parental leave [1]."])
    body = kapp.chat("How many days of parental leave per child?", ["hr"]).json()
    assert body["citations"][0]["quote"] in LEAVE
    assert kapp.upload("hr", "leave.md", LEAVE)["outcome"] == "unchanged"
