"""End-to-end fixtures: a real `enclave serve` subprocess on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.conftest import without_enclave_variables

ADMIN_KEY = "ek-e2e-admin-key-0123456789abcdef"
ENCLAVE = str(Path(sys.executable).parent / "enclave")
EXAMPLE = Path(__file__).parents[2] / "examples" / "hr-assistant"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    home: Path
    env: dict[str, str]
    process: subprocess.Popen[str]
    log: Path
    admin_key: str = ADMIN_KEY
    extra: dict[str, str] = field(default_factory=dict)

    def client(self, key: str | None = None, **options: object) -> OpenAI:
        return OpenAI(
            base_url=f"{self.url}/v1",
            api_key=key or self.admin_key,
            max_retries=0,
            timeout=120,
            **options,  # type: ignore[arg-type]
        )

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ENCLAVE, *args], env=self.env, capture_output=True, text=True, timeout=120
        )


def start_server(home: Path, config: str | None = None, **env_overrides: str) -> Server:
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # No ENCLAVE_* variable from the shell reaches the server; only what the test sets.
    env = {
        **without_enclave_variables(dict(os.environ)),
        "ENCLAVE_HOME": str(home),
        "ENCLAVE_LOG_LEVEL": "info",
    }
    env.update(env_overrides)
    args = [ENCLAVE, "serve", "--port", str(port)]
    if config is not None:
        path = home / "enclave.yaml"
        path.write_text(config)
        args += ["--config", str(path)]
    log = home / "server.log"
    process = subprocess.Popen(
        args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"enclave serve exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return Server(url, home, env, process, log, env.get("ENCLAVE_ADMIN_KEY", ""))
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    stop_server(process)
    raise RuntimeError(f"enclave serve was not ready in time:\n{log.read_text()}")


def stop_server(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_mock_hr_api(token: str) -> Iterator[str]:
    """The example's mock HR API on a free loopback port, demanding ``token``;
    yields its base URL (ending in ``/api``)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "mock_hr_api.py"), "--port", str(port)],
        env={"HR_TOKEN": token, "PATH": ""},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{url}/vacancies", timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the mock HR API did not start") from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


# One model slot and a two-deep queue, so queueing and cancellation are observable.
# Apps may send HR_TOKEN (the example's header secret) and nothing else, and may reach
# 127.0.0.1 (the mock HR API and `enclave test`'s fixture server) and no other
# non-public address: the outbound guard is on, opened for loopback explicitly.
E2E_CONFIG = """
runner:
  slots: 1
  queue_size: 2
apps:
  secret_env: [HR_TOKEN]
egress:
  allow: [127.0.0.1/32]
"""
HR_TOKEN = "e2e-hr-token-0123456789"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("enclave-e2e")
    running = start_server(home, E2E_CONFIG, ENCLAVE_ADMIN_KEY=ADMIN_KEY, HR_TOKEN=HR_TOKEN)
    yield running
    stop_server(running.process)
