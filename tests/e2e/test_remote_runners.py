"""Runners that join: three `enclave runner --join` processes on loopback.

A real `enclave serve` is the control plane. Three runners join it with a join
token (the scripted test engine, so no model is loaded), each declaring 4 GB:
``r1-public`` cleared only for public data, ``r2`` and ``r3`` for every class.
Two deployments are placed on them: ``tiny`` (public, one replica per runner)
and ``solo`` (confidential, one replica, on ``r2`` by first fit).

* a confidential request for ``tiny`` never reaches ``r1-public`` (each
  runner's own served-request counter says where requests went);
* SIGKILL ``r2``: it is marked down within seconds, ``solo`` is placed again
  on ``r3`` and answers there; SIGKILL ``r3`` too: ``solo`` gets a 503 that
  says why, while public ``tiny`` still answers on ``r1-public``;
* a bad join token, and a revoked one, are refused with 401 and register nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ADMIN_KEY, ENCLAVE, Server, free_port, start_server, stop_server

CONFIG = """
providers: []
default_model: tiny
remote_runners:
  heartbeat_interval_s: 0.5
  heartbeat_timeout_s: 3
  load_wait_s: 20
deployments:
  - {model: tiny, source: "builtin:smollm2", engine: llamacpp, memory_gb: 0.5,
     replicas: 3, clearance: public}
  - {model: solo, source: "builtin:smollm2", engine: llamacpp, memory_gb: 3,
     clearance: confidential}
"""
RUNNER_TOKEN = "runner-bearer-for-tests"
WAIT_S = 30
CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Runner:
    def __init__(
        self, server: Server, name: str, token: str, clearance: str, log_dir: Path
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"{name}.log"
        env = {**server.env, "RUNNER_TOKEN": RUNNER_TOKEN}
        self.process = subprocess.Popen(
            [
                ENCLAVE, "runner", "--join", server.url, "--token", token,
                "--name", name, "--clearance", clearance, "--memory-gb", "4",
                "--port", str(self.port), "--runner-token", "env:RUNNER_TOKEN",
                "--scripted-engine",
            ],
            env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def served(self) -> dict[str, int]:
        answer = httpx.get(
            f"{self.url}/runner/v1/stats",
            headers={"Authorization": f"Bearer {RUNNER_TOKEN}"},
            timeout=5,
        )
        return dict(answer.json()["served"])

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "home", CONFIG, ENCLAVE_ADMIN_KEY=ADMIN_KEY)
    yield server
    stop_server(server.process)


def runners_by_name(server: Server) -> dict[str, dict[str, Any]]:
    with server.http() as http:
        data = http.get("/api/admin/runners").json()["data"]
    return {runner["name"]: runner for runner in data}


def loaded_on(server: Server) -> dict[str, set[str]]:
    return {
        name: {m["model"] for m in runner["loaded"]}
        for name, runner in runners_by_name(server).items()
        if runner["state"] == "up"
    }


def chat(server: Server, model: str, classification: str | None = None) -> httpx.Response:
    headers = {"x-enclave-classification": classification} if classification else {}
    with server.http() as http:
        return http.post(
            "/v1/chat/completions", json={**CHAT, "model": model}, headers=headers, timeout=30
        )


def create_token(server: Server, name: str) -> tuple[int, str]:
    with server.http() as http:
        created = http.post("/api/admin/runners/tokens", json={"name": name}).json()
    return int(created["id"]), str(created["token"])


def test_three_joined_runners_place_route_by_clearance_and_survive_a_sigkill(
    control_plane: Server, tmp_path: Path
) -> None:
    server = control_plane
    _, token = create_token(server, "office")
    runners: dict[str, Runner] = {}
    try:
        # One at a time, so that first fit places solo on r2 (the first cleared runner).
        for name, clearance in (("r1-public", "public"), ("r2", "secret"), ("r3", "secret")):
            runners[name] = Runner(server, name, token, clearance, tmp_path)
            wait_for(lambda n=name: n in runners_by_name(server), f"{name} to join")  # type: ignore[misc]
        placed = wait_for(
            lambda: (
                (found := loaded_on(server)) == {"r1-public": {"tiny"}, "r2": {"tiny", "solo"},
                                                 "r3": {"tiny"}}
                and found
            ),
            "the deployments to be placed",
        )  # fmt: skip
        assert placed
        listed = runners_by_name(server)
        assert listed["r1-public"]["clearance"] == "public"
        assert listed["r2"]["devices"][0]["memory_total_gb"] == 4
        assert listed["r2"]["devices"][0]["memory_used_gb"] == pytest.approx(3.5)
        with server.http() as http:
            models = {m["id"] for m in http.get("/v1/models").json()["data"]}
            metrics = http.get("/metrics").text
        assert {"tiny", "solo"} <= models
        assert 'enclave_runner_up{runner="r2"} 1.0' in metrics

        # Classification: a confidential request never reaches the public runner.
        for _ in range(12):
            answer = chat(server, "tiny", "confidential")
            assert answer.status_code == 200, answer.text
        assert runners["r1-public"].served().get("tiny", 0) == 0
        assert runners["r2"].served().get("tiny", 0) + runners["r3"].served().get("tiny", 0) == 12
        # A public conversation sticks to one replica (prefix affinity).
        for _ in range(3):
            assert chat(server, "tiny", "public").status_code == 200
        counts = [r.served().get("tiny", 0) for r in runners.values()]
        assert sum(counts) == 15

        assert chat(server, "solo").status_code == 200
        assert runners["r2"].served().get("solo") == 1

        # SIGKILL r2: marked down within seconds, solo is placed again on r3.
        killed_at = time.monotonic()
        runners["r2"].kill()
        wait_for(lambda: runners_by_name(server)["r2"]["state"] == "down", "r2 to be down")
        assert time.monotonic() - killed_at < 10
        wait_for(lambda: "solo" in loaded_on(server).get("r3", set()), "solo on r3")
        answer = chat(server, "solo")
        assert answer.status_code == 200, answer.text
        assert runners["r3"].served().get("solo") == 1

        # SIGKILL r3 too: no runner cleared for solo is left, so a clear 503.
        runners["r3"].kill()
        wait_for(lambda: runners_by_name(server)["r3"]["state"] == "down", "r3 to be down")
        answer = wait_for(
            lambda: (a := chat(server, "solo")).status_code == 503 and a, "solo's 503"
        )
        error = answer.json()["error"]
        assert error["code"] == "model_unplaced"
        assert "solo" in error["message"] and "runner" in error["message"]
        # Public tiny still answers on the public runner; confidential tiny is refused.
        assert chat(server, "tiny", "public").status_code == 200
        assert chat(server, "tiny", "confidential").status_code == 403
        assert runners["r1-public"].served().get("tiny", 0) >= 1
    finally:
        for runner in runners.values():
            runner.kill()


def test_a_bad_or_revoked_join_token_is_refused_and_registers_nothing(
    control_plane: Server, tmp_path: Path
) -> None:
    server = control_plane
    body = {
        "name": "intruder",
        "url": "http://127.0.0.1:9",
        "token": "x",
        "devices": [{"name": "cpu", "kind": "cpu", "memory_total_gb": 64}],
        "engines": ["llamacpp"],
        "location": "on-prem",
        "clearance": "secret",
    }
    bad = httpx.post(
        f"{server.url}/api/runners/register",
        json=body,
        headers={"Authorization": "Bearer ejt-not-a-real-token"},
    )
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "invalid_join_token"

    # A real runner with a bad token exits with the reason.
    refused = subprocess.run(
        [ENCLAVE, "runner", "--join", server.url, "--token", "ejt-wrong", "--port", "0"],
        env=server.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "refused" in refused.stderr

    token_id, token = create_token(server, "revoked")
    runner = Runner(server, "r-revoked", token, "secret", tmp_path)
    try:
        wait_for(lambda: "r-revoked" in runners_by_name(server), "the runner to join")
        with server.http() as http:
            revoked = http.delete(f"/api/admin/runners/tokens/{token_id}").json()
        assert revoked["disconnected"] == ["r-revoked"]
        # Its next heartbeat is refused: the runner stops, and is not registered again.
        assert runner.process.wait(timeout=WAIT_S) == 1
        again = httpx.post(
            f"{server.url}/api/runners/register",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert again.status_code == 401
        assert runners_by_name(server) == {}
    finally:
        runner.kill()


def test_a_runner_serving_https_is_verified_with_the_configured_ca(tmp_path: Path) -> None:
    cert, key = tmp_path / "runner.pem", tmp_path / "runner-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    config = CONFIG.replace("  load_wait_s: 20\n", f"  load_wait_s: 20\n  ca_file: {cert}\n")
    server = start_server(tmp_path / "home", config, ENCLAVE_ADMIN_KEY=ADMIN_KEY)
    runner = None
    try:
        _, token = create_token(server, "tls")
        port = free_port()
        runner = subprocess.Popen(
            [ENCLAVE, "runner", "--join", server.url, "--token", token, "--name", "r-tls",
             "--memory-gb", "4", "--port", str(port), "--scripted-engine",
             "--tls-cert", str(cert), "--tls-key", str(key)],
            env=server.env, stdout=(tmp_path / "r-tls.log").open("w"),
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        wait_for(lambda: "tiny" in loaded_on(server).get("r-tls", set()), "tiny over HTTPS")
        assert runners_by_name(server)["r-tls"]["url"] == f"https://127.0.0.1:{port}"
        answer = chat(server, "tiny", "public")
        assert answer.status_code == 200, answer.text
    finally:
        if runner is not None and runner.poll() is None:
            os.kill(runner.pid, signal.SIGKILL)
            runner.wait(timeout=10)
        stop_server(server.process)
