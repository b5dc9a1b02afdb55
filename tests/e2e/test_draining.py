"""SIGTERM drains: readiness drops first, requests in flight finish, then the server exits.

What Kubernetes (and haproxy's health checks) rely on during a rolling
upgrade: after SIGTERM `/readyz` answers 503 for `cluster.drain_s` while
`/livez` and requests keep being answered, a stream started before the
signal ends with `[DONE]`, and the process then exits on its own.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enclave.testing.mock_upstream import MockUpstream, running_mock_upstream

from .conftest import ADMIN_KEY, start_server, stop_server


@pytest.fixture
def mock() -> Iterator[MockUpstream]:
    with running_mock_upstream(chunks=20, delay=0.15) as upstream:
        yield upstream


def test_sigterm_drops_readiness_then_finishes_the_stream_in_flight(
    tmp_path: Path, mock: MockUpstream
) -> None:
    config = (
        "default_model: mock\n"
        "cluster: {drain_s: 2, grace_s: 20}\n"
        "providers:\n"
        "  - name: upstream\n"
        "    type: openai\n"
        f"    base_url: {mock.url}\n"
        "    clearance: secret\n"
        "    models: [mock]\n"
    )
    server = start_server(tmp_path / "home", config, ENCLAVE_ADMIN_KEY=ADMIN_KEY)
    stream_text: list[str] = []

    def stream() -> None:  # 20 chunks, 0.15 s apart: about 3 s, across the drain
        with (
            server.http() as client,
            client.stream(
                "POST",
                "/v1/chat/completions",
                json={
                    "model": "mock",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            ) as response,
        ):
            stream_text.extend(response.iter_lines())

    try:
        worker = threading.Thread(target=stream)
        worker.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = httpx.get(f"{server.url}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert httpx.get(f"{server.url}/livez", timeout=5).status_code == 200
        with server.http() as client:  # still served while draining
            answer = client.post(
                "/v1/chat/completions",
                json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
                headers={"x-mock-chunks": "1"},
            )
        assert answer.status_code == 200
        worker.join(30)
        events = [line for line in stream_text if line]
        assert len(events) > 20 and events[-1] == "data: [DONE]", events[-3:]
        assert server.process.wait(timeout=30) is not None  # exits on its own
    finally:
        stop_server(server.process)
