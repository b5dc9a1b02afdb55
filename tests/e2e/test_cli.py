"""The `enclave` command: help, config errors, keys, and the first-start admin key."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ENCLAVE, Server, start_server, stop_server

pytestmark = pytest.mark.model

KEY = re.compile(r"ek-[A-Za-z0-9_-]{43}")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "enclave serve"),
        (["serve"], "ENCLAVE_HOME"),
        (["keys"], "hashes"),
        (["keys", "create"], "--workspace"),
        (["config", "check"], "field and line"),
    ],
)
def test_help_is_useful(server: Server, args: list[str], expected: str) -> None:
    result = server.cli(*args, "--help")
    assert result.returncode == 0
    assert expected in " ".join(result.stdout.split())


def test_config_errors_name_the_field_and_line(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("port: 8080\nrunner:\n  slots: zero\n")
    result = server.cli("config", "check", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}, line 3: field 'runner.slots'" in result.stderr


def test_config_check_finds_the_model_files(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        "default_model: m\n"
        "providers:\n"
        "  - {name: lab, type: llamacpp, models: [{name: m, path: /nowhere/m.gguf}]}\n"
    )
    result = server.cli("config", "check", "--config", str(config))
    assert result.returncode == 2
    assert "providers.lab.models.m: model file not found: /nowhere/m.gguf" in result.stderr
    assert server.cli("config", "check").returncode == 0


def test_keys_lifecycle_against_a_running_server(server: Server) -> None:
    created = server.cli("keys", "create", "analyst", "--workspace", "research")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert KEY.fullmatch(secret)
    with server.http(key=secret) as client:
        me = client.get("/api/me").json()
        assert me["workspace"] == "research" and me["admin"] is False

    listing = server.cli("keys", "list").stdout
    assert "analyst" in listing and secret[:8] in listing and secret not in listing
    key_id = next(line.split()[0] for line in listing.splitlines() if "analyst" in line)

    assert server.cli("keys", "revoke", key_id).returncode == 0
    deadline = time.monotonic() + 10  # the server caches verified keys for 5 s
    with server.http(key=secret) as client:
        while client.get("/v1/models").status_code != 401:
            assert time.monotonic() < deadline, "revoked key still accepted"
            time.sleep(0.25)
    assert "revoked" in server.cli("keys", "list").stdout
    assert server.cli("keys", "revoke", "9999").returncode == 1


def test_keys_are_stored_only_as_hashes(server: Server) -> None:
    secret = server.cli("keys", "create", "hash-check").stdout.strip()
    database = (server.home / "enclave.db").read_bytes()
    wal = server.home / "enclave.db-wal"
    stored = database + (wal.read_bytes() if wal.exists() else b"")
    assert secret.encode() not in stored
    assert server.admin_key.encode() not in stored


CHAT_ONLY = """
providers:
  - name: local
    type: llamacpp
    models: [{name: smollm2-135m, path: "builtin:smollm2", n_ctx: 1024}]
"""


def test_first_start_prints_an_admin_key_once(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    first = start_server(home, CHAT_ONLY, ENCLAVE_ADMIN_KEY="")
    try:
        keys = KEY.findall(first.log.read_text())
        assert len(keys) == 1
        response = httpx.get(
            f"{first.url}/api/me", headers={"Authorization": f"Bearer {keys[0]}"}, timeout=10
        )
        assert response.json()["admin"] is True
    finally:
        stop_server(first.process)
    second = start_server(home, CHAT_ONLY, ENCLAVE_ADMIN_KEY="")
    try:
        assert KEY.findall(second.log.read_text()) == []
    finally:
        stop_server(second.process)
    rows = sqlite3.connect(home / "enclave.db").execute("SELECT key_hash FROM api_keys").fetchall()
    assert len(rows) == 1 and keys[0] not in rows[0][0]
    assert Path(ENCLAVE).exists()


def test_providers_usage_and_audit_commands_against_a_running_server(server: Server) -> None:
    reply = server.client().chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    listed = server.cli("providers", "list", "--url", server.url, "--key", server.admin_key)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"local\s+llamacpp\s+on-prem\s+secret\s+yes\s+closed", listed.stdout)
    deadline = time.monotonic() + 10
    while True:  # usage and audit are written in batches, a fraction of a second later
        usage = server.cli("usage", "--json")
        rows = json.loads(usage.stdout or "[]") if usage.returncode == 0 else []
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert reply.usage is not None
    assert sum(row["total_tokens"] for row in rows) >= reply.usage.total_tokens
    verified = server.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit log OK" in verified.stdout
