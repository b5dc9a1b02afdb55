"""Models from enclave.yaml: a local GGUF by path shows up and serves; a bad path stops start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from enclave.app import create_app
from enclave.errors import ConfigError
from enclave.providers.builtin import resolve_model_path
from enclave.settings import load_settings
from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.model


def test_a_gguf_file_added_by_path_is_listed_and_serves(tmp_path: Path) -> None:
    gguf = resolve_model_path("builtin:smollm2")  # any GGUF file on disk will do
    config = tmp_path / "enclave.yaml"
    config.write_text(
        "providers:\n"
        "  - name: lab\n"
        "    type: llamacpp\n"
        f"    models: [{{name: my-model, path: '{gguf}', n_ctx: 1024}}]\n"
        "default_model: my-model\n"
        "runner: {slots: 1}\n"
    )
    settings = load_settings(config, home=tmp_path / "home", admin_key=SecretStr(ADMIN_KEY))
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with TestClient(create_app(settings)) as client:
        ids = [model["id"] for model in client.get("/v1/models", headers=headers).json()["data"]]
        assert ids == ["my-model"]
        reply = client.post(
            "/v1/chat/completions",
            headers=headers,
            json={
                "model": "lab/my-model",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 5,
            },
        )
        assert reply.status_code == 200
        # The response names the model as the client asked for it; the header names
        # the model that answered.
        assert reply.json()["model"] == "lab/my-model"
        assert reply.headers["x-enclave-model"] == "my-model"


def test_a_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "enclave.yaml"
    config.write_text(
        "providers:\n"
        "  - {name: lab, type: llamacpp, models: [{name: m, path: /nowhere/model.gguf}]}\n"
        "default_model: m\n"
    )
    with pytest.raises(ConfigError, match=r"model file not found: /nowhere/model\.gguf"):
        create_app(load_settings(config, home=tmp_path / "home"))
