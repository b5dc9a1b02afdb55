"""Nothing answered unlogged: `kill -9` a real server and count what it left behind.

Each test starts `enclave serve` against a mock upstream, kills it with SIGKILL
(its own process, by PID) and reads the database it left: every answered
request has its entry and its usage, every request in flight an
``interrupted`` entry after a restart, and `enclave audit verify` passes.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from enclave.storage.db import open_database
from enclave.storage.models import AuditEntryRow, AuditIntentRow, UsageRow
from enclave.testing.mock_upstream import MockUpstream, running_mock_upstream

from .conftest import ADMIN_KEY, Server, start_server, stop_server

ANSWERED = 60  # at least 50, per issue 12


def config(mock: MockUpstream) -> str:
    return (
        "default_model: mock\n"
        "providers:\n"
        "  - name: upstream\n"
        "    type: openai\n"
        f"    base_url: {mock.url}\n"
        "    clearance: secret\n"
        "    models: [mock]\n"
    )


@pytest.fixture
def mock() -> Iterator[MockUpstream]:
    with running_mock_upstream(chunks=5) as upstream:
        yield upstream


def kill(server: Server) -> None:
    """SIGKILL the server we started, and nothing else."""
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)


def read_log(home: Path) -> tuple[list[dict], int, int, int]:
    """(entries, intents left, usage requests, usage tokens) from the server's database."""
    engine, sessions = open_database(f"sqlite:///{home / 'enclave.db'}")
    try:
        with sessions() as session:
            payloads = session.scalars(select(AuditEntryRow.payload).order_by(AuditEntryRow.seq))
            entries = [json.loads(payload) for payload in payloads]
            intents = session.scalar(select(func.count()).select_from(AuditIntentRow)) or 0
            requests, tokens = session.execute(
                select(
                    func.coalesce(func.sum(UsageRow.requests), 0),
                    func.coalesce(func.sum(UsageRow.prompt_tokens + UsageRow.completion_tokens), 0),
                )
            ).one()
    finally:
        engine.dispose()
    return entries, int(intents), int(requests), int(tokens)


def verify(server: Server) -> str:
    result = server.cli("audit", "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_kill_9_right_after_answers_keeps_every_entry_and_its_usage(
    tmp_path: Path, mock: MockUpstream
) -> None:
    server = start_server(tmp_path / "home", config(mock), ENCLAVE_ADMIN_KEY=ADMIN_KEY)
    try:
        spent = 0
        deadline = time.monotonic() + 60
        with server.http() as http:
            for number in range(ANSWERED):
                assert time.monotonic() < deadline, "the requests took too long"
                body: dict[str, object] = {
                    "model": "mock",
                    "messages": [{"role": "user", "content": f"q {number}"}],
                }
                if number % 3 == 0:  # streams too: their usage arrives in the last chunk
                    body |= {"stream": True, "stream_options": {"include_usage": True}}
                    text = http.post("/v1/chat/completions", json=body).text
                    assert text.endswith("data: [DONE]\n\n")
                    usage = next(
                        json.loads(line[6:])["usage"]
                        for line in text.splitlines()
                        if line.startswith("data: {") and '"usage":{' in line
                    )
                else:
                    response = http.post("/v1/chat/completions", json=body)
                    assert response.status_code == 200
                    usage = response.json()["usage"]
                spent += usage["prompt_tokens"] + usage["completion_tokens"]
        kill(server)  # straight after the last answer
    finally:
        stop_server(server.process)

    entries, intents, requests, tokens = read_log(tmp_path / "home")
    answered = [entry for entry in entries if entry["endpoint"] == "/v1/chat/completions"]
    assert [entry["outcome"] for entry in answered] == ["ok"] * ANSWERED
    assert intents == 0
    assert (requests, tokens) == (ANSWERED, spent)
    # Verified after a restart, which signs what the kill left past the signed head.
    restarted = start_server(tmp_path / "home", config(mock), ENCLAVE_ADMIN_KEY=ADMIN_KEY)
    try:
        assert f"OK: {len(entries)} entries" in verify(restarted)
    finally:
        stop_server(restarted.process)


def test_kill_9_mid_stream_leaves_an_interrupted_entry(tmp_path: Path) -> None:
    # 40 chunks 0.1 s apart: the streams are in flight for 4 s, and killed after one.
    with running_mock_upstream(chunks=40, delay=0.1) as slow:
        server = start_server(tmp_path / "home", config(slow), ENCLAVE_ADMIN_KEY=ADMIN_KEY)
        started = threading.Barrier(3, timeout=30)
        try:

            def stream(number: int) -> None:
                body = {
                    "model": "mock",
                    "stream": True,
                    "messages": [{"role": "user", "content": f"long {number}"}],
                }
                with (
                    server.http() as http,
                    http.stream("POST", "/v1/chat/completions", json=body) as response,
                ):
                    assert response.status_code == 200
                    lines = response.iter_lines()
                    next(line for line in lines if line.startswith("data: {"))
                    started.wait()
                    with pytest.raises(httpx.HTTPError):  # the server dies before [DONE]
                        for line in lines:
                            assert line != "data: [DONE]"

            workers = [threading.Thread(target=stream, args=(n,)) for n in range(2)]
            for worker in workers:
                worker.start()
            started.wait()
            time.sleep(0.3)
            kill(server)
            for worker in workers:
                worker.join(timeout=30)
        finally:
            stop_server(server.process)

        entries, intents, _, _ = read_log(tmp_path / "home")
        assert entries == [] or all(entry["outcome"] != "ok" for entry in entries)
        assert intents == 2
        restarted = start_server(tmp_path / "home", config(slow), ENCLAVE_ADMIN_KEY=ADMIN_KEY)
        try:
            entries, intents, _, _ = read_log(tmp_path / "home")
            interrupted = [entry for entry in entries if entry["outcome"] == "interrupted"]
            assert len(interrupted) == 2 and intents == 0
            assert {entry["provider"] for entry in interrupted} == {"upstream"}
            assert all(entry["requested_model"] == "mock" for entry in interrupted)
            verify(restarted)
        finally:
            stop_server(restarted.process)
