"""Join tokens, the runner registry, the admin API, /metrics and `enclave runners`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from enclave.app import create_app
from enclave.cli.main import app as cli
from enclave.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from enclave.metrics import Metrics
from enclave.providers.registry import ModelRegistry
from enclave.runners.control import RunnerControl
from enclave.runners.registry import (
    DeviceInfo,
    DeviceStats,
    LoadedModel,
    RunnerInfo,
    RunnerRegistry,
    RunnerStats,
)
from enclave.runners.tokens import JoinTokenService
from enclave.settings import DEFAULT_CLASSIFICATIONS, Settings
from enclave.storage.db import open_database
from enclave.testing.scripted import ScriptedProvider
from tests.conftest import ADMIN_KEY

CLASSES = list(DEFAULT_CLASSIFICATIONS)


def auth(key: str = ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def tokens(tmp_path: Path) -> JoinTokenService:
    _, sessions = open_database(f"sqlite:///{tmp_path / 'enclave.db'}")
    return JoinTokenService(sessions, CLASSES)


def info(name: str = "office-gpu", clearance: str = "confidential") -> RunnerInfo:
    return RunnerInfo(
        name=name,
        url=f"https://{name}:8081",
        devices=(DeviceInfo("gpu0", "gpu", 24.0),),
        engines=frozenset({"llamacpp", "vllm"}),
        location="office",
        clearance=clearance,
    )


def test_join_tokens_are_hashed_shown_once_and_refused_when_bad_expired_or_revoked(
    tokens: JoinTokenService,
) -> None:
    secret, token = tokens.create("office-gpu")
    assert secret.startswith("ejt-") and len(secret) > 40 and token.prefix == secret[:8]
    assert secret not in repr(tokens.list())
    assert tokens.verify_join_token(secret).id == token.id
    assert tokens.list()[0].last_used_at is not None

    with pytest.raises(AuthenticationFailed) as bad:
        tokens.verify_join_token(secret + "x")
    assert bad.value.code == "invalid_join_token"

    past = datetime.now(UTC) - timedelta(seconds=1)
    old, _ = tokens.create("old", expires_at=past)
    with pytest.raises(AuthenticationFailed) as expired:
        tokens.verify_join_token(old)
    assert expired.value.code == "expired_join_token"

    assert tokens.revoke(token.id).status == "revoked"
    with pytest.raises(AuthenticationFailed) as revoked:
        tokens.verify_join_token(secret)
    assert revoked.value.code == "invalid_join_token"
    with pytest.raises(NotFound):
        tokens.revoke(999)
    with pytest.raises(InvalidRequest):
        tokens.create("x", max_clearance="top")


def test_registry_caps_clearance_marks_missed_heartbeats_down_and_forgets_revoked_tokens(
    tokens: JoinTokenService,
) -> None:
    clock = [100.0]
    metrics = Metrics()
    registry = RunnerRegistry(
        CLASSES, heartbeat_timeout_s=5, clock=lambda: clock[0], metrics=metrics
    )
    capped_secret, _ = tokens.create("capped", max_clearance="internal")
    capped = tokens.verify_join_token(capped_secret)
    assert registry.register(info("cheap", "secret"), capped).clearance == "internal"
    secret, _ = tokens.create("gpu")
    token = tokens.verify_join_token(secret)
    registry.register(info(), token)
    with pytest.raises(Conflict):
        registry.register(info(), capped)  # another token cannot take an up runner's name
    with pytest.raises(InvalidRequest):
        registry.register(info("x", "top"), token)

    stats = RunnerStats(
        devices=(DeviceStats("gpu0", 6.5, 17.5),),
        loaded=(LoadedModel("llama", "gpu0", 6.0, "high", queue_depth=3, in_flight=1, idle_s=2),),
        queue_depth=3,
        tokens_per_s=41.5,
    )
    clock[0] = 103.0
    registry.heartbeat("office-gpu", stats)
    with pytest.raises(NotFound):
        registry.heartbeat("stranger", stats)
    view = {v.name: v for v in registry.list_runners()}["office-gpu"]
    assert (view.state, view.queue_depth, view.tokens_per_s) == ("up", 3, 41.5)
    assert view.devices[0].memory_free_gb == 17.5 and view.loaded[0].model == "llama"
    placed = {r.name: r for r in registry.placement_runners()}["office-gpu"]
    assert placed.replicas[0].last_used == 101.0 and placed.replicas[0].in_flight == 1

    text = metrics_text(metrics)
    assert 'enclave_runner_up{runner="office-gpu"} 1.0' in text
    assert 'enclave_runner_memory_free_bytes{device="gpu0",runner="office-gpu"} 1.75e+10' in text
    assert 'enclave_runner_tokens_per_second{runner="office-gpu"} 41.5' in text

    clock[0] = 106.0
    assert registry.sweep() == ["cheap"]  # its last word was at 100
    clock[0] = 108.5
    assert registry.sweep() == ["office-gpu"]
    assert registry.sweep() == []
    assert not any(r.up for r in registry.placement_runners())
    assert 'enclave_runner_up{runner="office-gpu"} 0.0' in metrics_text(metrics)
    registry.heartbeat("office-gpu", stats)
    assert {v.name: v.state for v in registry.list_runners()}["office-gpu"] == "up"

    assert registry.forget_token(token.id) == ["office-gpu"]
    assert [v.name for v in registry.list_runners()] == ["cheap"]
    assert "office-gpu" not in metrics_text(metrics)


def metrics_text(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path / "home",
        admin_key=ADMIN_KEY,
        deployments=[
            {
                "model": "llama",
                "source": "file:/models/llama.gguf",
                "engine": "llamacpp",
                "memory_gb": 6,
                "clearance": "confidential",
            }
        ],
    )
    app = create_app(settings, registry=ModelRegistry([ScriptedProvider()], "scripted"))
    with TestClient(app) as client:
        yield client


def test_admin_api_creates_lists_and_revokes_tokens_and_lists_runners(client: TestClient) -> None:
    user = client.post("/api/keys", json={"name": "u"}, headers=auth()).json()["key"]
    for method, path in [
        ("GET", "/api/admin/runners"),
        ("GET", "/api/admin/runners/tokens"),
        ("POST", "/api/admin/runners/tokens"),
        ("DELETE", "/api/admin/runners/tokens/1"),
        ("GET", "/api/admin/deployments"),
    ]:
        assert client.request(method, path, headers=auth(user)).status_code == 403, path
        assert client.request(method, path).status_code == 401, path

    created = client.post("/api/admin/runners/tokens", json={"name": "gpu"}, headers=auth())
    assert created.status_code == 201
    secret = created.json()["token"]
    listed = client.get("/api/admin/runners/tokens", headers=auth()).json()
    assert [t["status"] for t in listed] == ["active"] and "token" not in listed[0]
    bad = client.post(
        "/api/admin/runners/tokens", json={"name": "x", "max_clearance": "top"}, headers=auth()
    )
    assert bad.status_code == 400

    control: RunnerControl = client.app.state.runner_control  # type: ignore[attr-defined]
    token = control.tokens.verify_join_token(secret)
    control.registry.register(info(), token)
    runners = client.get("/api/admin/runners", headers=auth()).json()["data"]
    assert [(r["name"], r["state"], r["clearance"]) for r in runners] == [
        ("office-gpu", "up", "confidential")
    ]
    assert runners[0]["devices"][0]["memory_total_gb"] == 24.0

    # The declared deployment is placed on it; with the runner gone, a clear 503.
    decisions = control.plan(now=0).decisions
    assert [(d.kind, d.model, d.runner) for d in decisions] == [("place", "llama", "office-gpu")]
    assert control.unavailable("llama", now=0) is None
    revoked = client.delete(f"/api/admin/runners/tokens/{token.id}", headers=auth()).json()
    assert revoked["status"] == "revoked" and revoked["disconnected"] == ["office-gpu"]
    assert client.get("/api/admin/runners", headers=auth()).json()["data"] == []
    error = control.unavailable("llama", now=0)
    assert error is not None and error.status_code == 503
    assert (
        error.message
        == "The model 'llama' is not placed on any runner: no runner is up to serve 'llama'."
    )
    with pytest.raises(AuthenticationFailed):
        control.tokens.verify_join_token(secret)

    deployments = client.get("/api/admin/deployments", headers=auth()).json()["data"]
    assert [(d["model"], d["origin"], d["clearance"]) for d in deployments] == [
        ("llama", "config", "confidential")
    ]


def test_runners_cli_manages_tokens_and_lists_runners(
    enclave_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    created = runner.invoke(
        cli, ["runners", "token", "create", "--name", "office", "--expires", "7"]
    )
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("ejt-")
    listed = runner.invoke(cli, ["runners", "token", "list"])
    assert "office" in listed.stdout and "active" in listed.stdout and secret not in listed.stdout
    assert runner.invoke(cli, ["runners", "token", "revoke", "1"]).exit_code == 0
    assert "revoked" in runner.invoke(cli, ["runners", "token", "list"]).stdout
    missing = runner.invoke(cli, ["runners", "token", "revoke", "7"])
    assert missing.exit_code == 1 and "No join token with id 7" in missing.output

    calls: list[str] = []

    def fake_call(self: object, method: str, path: str, **_: object) -> object:
        calls.append(f"{method} {path}")
        stats = {"name": "gpu0", "memory_used_gb": 6.0, "memory_free_gb": 18.0}
        return {
            "data": [
                {
                    "name": "office-gpu",
                    "state": "down",
                    "clearance": "confidential",
                    "devices": [{**stats, "memory_total_gb": 24.0}],
                    "loaded": [{"model": "llama"}],
                    "queue_depth": 2,
                    "tokens_per_s": 12.25,
                }
            ]
        }

    monkeypatch.setattr("enclave.cli.client.ApiClient.call", fake_call)
    shown = runner.invoke(cli, ["runners", "list", "--key", "k", "--url", "http://x"])
    assert shown.exit_code == 0, shown.output
    assert calls == ["GET /api/admin/runners"]
    assert "office-gpu" in shown.stdout and "down" in shown.stdout
    assert "gpu0 6.0/18.0/24.0" in shown.stdout and "llama" in shown.stdout
