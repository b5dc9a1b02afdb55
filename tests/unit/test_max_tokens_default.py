"""``models[].max_tokens_default``: the answer length of a request that sets none,
applied upstream (seen in the mock's request log) and reported by ``/v1/models``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from enclave.app import create_app
from enclave.settings import EMBEDDED_MAX_TOKENS_DEFAULT, Settings
from enclave.testing.mock_upstream import MockUpstream, running_mock_upstream
from tests.conftest import ADMIN_KEY

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_embedded_chat_models_get_a_default_cap_and_upstreams_none() -> None:
    settings = Settings.model_validate(
        {
            "providers": [
                {
                    "name": "local",
                    "type": "llamacpp",
                    "models": [
                        {"name": "a", "path": "builtin:smollm2"},
                        {"name": "b", "path": "builtin:smollm2", "max_tokens_default": 64},
                    ],
                },
                {
                    "name": "up",
                    "type": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "models": ["m"],
                },
            ],
            "default_model": "a",
        }
    )
    local, upstream = settings.providers
    assert [m.max_tokens_default for m in local.models] == [EMBEDDED_MAX_TOKENS_DEFAULT, 64]
    assert upstream.models[0].max_tokens_default is None


@pytest.fixture(scope="module")
def mock() -> Iterator[MockUpstream]:
    with running_mock_upstream(models=("m", "e"), chunks=2) as running:
        yield running


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, mock: MockUpstream) -> Iterator[TestClient]:
    home: Path = tmp_path_factory.mktemp("max-tokens") / "home"
    settings = Settings.model_validate(
        {
            "home": home,
            "admin_key": ADMIN_KEY,
            "providers": [
                {
                    "name": "up",
                    "type": "openai",
                    "base_url": mock.url,
                    "clearance": "secret",
                    "models": [
                        {"name": "m", "max_tokens_default": 40},
                        {"name": "e", "embeddings": True},
                    ],
                }
            ],
            "default_model": "m",
        }
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def chat(client: TestClient, **extra: object) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    answer = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text


def test_a_request_without_a_limit_is_sent_with_the_models_default(
    client: TestClient, mock: MockUpstream
) -> None:
    mock.reset()
    chat(client)
    chat(client, max_tokens=7)
    chat(client, max_completion_tokens=9)
    sent = [request.body for request in mock.requests]
    assert sent[0]["max_tokens"] == 40
    assert sent[1]["max_tokens"] == 7
    assert sent[2].get("max_completion_tokens") == 9 and "max_tokens" not in sent[2]


def test_v1_models_reports_capabilities_and_the_default(client: TestClient) -> None:
    listed = client.get("/v1/models", headers=AUTH)
    assert listed.status_code == 200, listed.text
    models = {model["id"]: model for model in listed.json()["data"]}
    assert models["m"]["capabilities"] == ["chat"]
    assert models["m"]["max_tokens_default"] == 40
    assert models["e"]["capabilities"] == ["embeddings"]
    assert models["e"]["max_tokens_default"] is None
    one = client.get("/v1/models/m", headers=AUTH).json()
    assert one["max_tokens_default"] == 40 and one["owned_by"] == "up"
