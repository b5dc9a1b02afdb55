"""The local runner: SIGKILL it mid-stream and the control plane carries on.

A real ``enclave serve`` hosts the embedded chat model and embedder in two
supervised runner processes. Killing the chat runner while it streams ends
that stream with an SSE error event; the supervisor restarts the runner; the
next request is answered normally, by the same control-plane process, and the
embedder (its own runner) answers throughout.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ADMIN_KEY, Server, start_server, stop_server

CONFIG = """
runner:
  slots: 1
providers:
  - name: local
    type: llamacpp
    models:
      - {name: smollm2-135m, path: "builtin:smollm2", n_ctx: 2048}
  - name: local-embed
    type: sentence-transformers
    models:
      - {name: all-minilm-l6-v2, path: "builtin:all-minilm-l6-v2", n_ctx: 256}
"""
RECOVERY_BOUND_S = 60


@pytest.fixture
def runner_server(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "home", CONFIG, ENCLAVE_ADMIN_KEY=ADMIN_KEY)
    yield server
    stop_server(server.process)


def chat_runner(server: Server) -> dict:
    with server.http() as http:
        providers = http.get("/api/providers").json()
    state = next(p for p in providers if p["name"] == "local")["state"]
    return dict(state["runner"])


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_sigkill_mid_stream_gives_an_error_event_a_restart_and_then_answers(
    runner_server: Server,
) -> None:
    server = runner_server
    control_plane = server.process.pid
    before = chat_runner(server)
    assert before["state"] == "ready" and parent_pid(before["pid"]) == control_plane

    body = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        "max_tokens": 1500,
        "temperature": 0,
        "stream": True,
    }
    events: list[str] = []
    killed_at = 0.0
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line.removeprefix("data: "))
            if len(events) == 3:
                os.kill(before["pid"], signal.SIGKILL)
                killed_at = time.monotonic()
    assert killed_at, "the stream ended before the runner could be killed"
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "provider_error" and error["code"] == "runner_unavailable"
    assert "SIGKILL" in error["message"]

    # The embedder has its own runner and answers while the chat runner restarts.
    with server.http() as http:
        embedded = http.post(
            "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "still here"}
        )
    assert embedded.status_code == 200

    client = server.client()
    deadline = killed_at + RECOVERY_BOUND_S
    answer = None
    while answer is None and time.monotonic() < deadline:
        try:
            answer = client.chat.completions.create(
                model="smollm2-135m",
                messages=[{"role": "user", "content": "Say hello."}],
                max_tokens=8,
                temperature=0,
            )
        except Exception:  # a 502 while the runner restarts; the bound below decides
            time.sleep(0.2)
    recovered_in = time.monotonic() - killed_at
    assert answer is not None, f"no answer within {RECOVERY_BOUND_S} s of the SIGKILL"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")

    after = chat_runner(server)
    assert server.process.poll() is None and server.process.pid == control_plane
    assert after["state"] == "ready" and after["pid"] != before["pid"]
    assert parent_pid(after["pid"]) == control_plane
    assert after["restarts"] == 1 and after["last_exit"].startswith("killed by SIGKILL")
    with server.http() as http:
        ready = http.get("/readyz")
    assert ready.status_code == 200
    print(f"recovered {recovered_in:.1f} s after SIGKILL")
    assert "runner local ready" in server.log.read_text()
