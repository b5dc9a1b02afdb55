"""Knowledge end to end: the CLI, a server killed mid-ingestion, and real-model answers."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.testing import documents
from tests.e2e.conftest import ADMIN_KEY, ENCLAVE, Server, start_server, stop_server

pytestmark = pytest.mark.model

LEAVE = """# Leave policy

## Parental leave

Employees receive 480 days of parental leave per child. The days can be shared
between both parents.

## Annual leave

Every employee gets 25 days of annual leave per year.
"""


def wait_for(
    http: httpx.Client, kb: str, document_id: int, states: tuple[str, ...], timeout: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    document: dict[str, Any] = {}
    while time.monotonic() < deadline:
        document = http.get(f"/api/knowledge/{kb}/documents/{document_id}").json()
        if document["status"] in states:
            return document
        time.sleep(0.1)
    raise AssertionError(f"document {document_id} never reached {states}: {document}")


def test_cli_adds_a_folder_with_progress_and_a_summary(server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "policies").mkdir(parents=True)
    (folder / "policies" / "leave.md").write_text(LEAVE)
    (folder / "canteen.txt").write_text("The canteen serves lunch from 11:30 to 13:30.\n")
    documents.write_corrupt_pdf(folder / "broken.pdf")
    (folder / "skip.bin").write_bytes(b"\x00\x01")
    env = {**server.env, "ENCLAVE_URL": server.url, "ENCLAVE_API_KEY": server.admin_key}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ENCLAVE, *args], env=env, capture_output=True, text=True, timeout=300
        )

    created = cli("knowledge", "create", "handbook", "--description", "Staff handbook")
    assert created.returncode == 0, created.stderr
    added = cli("knowledge", "add", "handbook", str(folder))
    # One document failed, so the exit status says so; the others are indexed.
    assert added.returncode == 1, added.stderr
    assert "indexed    docs/policies/leave.md" in added.stderr
    assert "failed     docs/broken.pdf: corrupt PDF" in added.stderr
    assert "3 documents: 2 indexed, 1 failed" in added.stderr
    # Unchanged files are skipped; a failed one is tried again.
    again = cli("knowledge", "add", "handbook", str(folder), "--exclude", "*.pdf")
    assert again.returncode == 0 and "2 documents: 2 unchanged" in again.stderr
    listed = cli("knowledge", "ls", "handbook")
    assert "docs/policies/leave.md" in listed.stdout and "indexed" in listed.stdout
    found = cli("knowledge", "query", "handbook", "How many days of parental leave?")
    assert found.returncode == 0 and "480 days" in found.stdout
    removed = cli("knowledge", "rm", "handbook", "--yes")
    assert removed.returncode == 0


def test_a_grounded_answer_from_the_real_model_cites_the_document(server: Server) -> None:
    with server.http() as http:
        assert http.post("/api/knowledge", json={"name": "leave"}).status_code == 201
        added = http.post(
            "/api/knowledge/leave/documents", files={"file": ("leave.md", LEAVE.encode())}
        ).json()["data"][0]
        wait_for(http, "leave", added["document"]["id"], ("indexed",))
    client = server.client()
    answer = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "How many days of parental leave per child?"}],
        max_tokens=48,
        temperature=0,
        extra_body={"enclave": {"knowledge": ["leave"]}},
    )
    extra = answer.model_extra or {}
    citations = extra["citations"]
    assert citations, answer
    for citation in citations:
        # Whatever the model wrote, each citation quotes the document exactly.
        start, end = citation["location"]["quote_start"], citation["location"]["quote_end"]
        assert LEAVE[start:end] == citation["quote"]
        assert citation["document"]["name"] == "leave.md"
    content = answer.choices[0].message.content or ""
    assert any(f"[{c['number']}]" in content for c in citations)
    nothing = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Which planet has the most moons?"}],
        extra_body={"enclave": {"knowledge": ["leave"]}},
    )
    assert nothing.choices[0].message.content == "I can't find this in the knowledge base."
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "How many days of annual leave?"}],
        max_tokens=32,
        stream=True,
        extra_body={"enclave": {"knowledge": ["leave"]}},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert (chunks[-1].model_extra or {})["citations"][0]["document"]["name"] == "leave.md"


def test_a_killed_server_resumes_ingestion(tmp_path: Path) -> None:
    """SIGKILL while a large document is being embedded; the restarted server finishes it."""
    home = tmp_path / "home"
    big = "\n\n".join(
        f"## Section {i}\n\n"
        + " ".join(f"Paragraph {i} sentence {j} about topic {i * j % 97}." for j in range(40))
        for i in range(150)
    )
    server = start_server(home, ENCLAVE_ADMIN_KEY=ADMIN_KEY)
    try:
        with server.http() as http:
            assert http.post("/api/knowledge", json={"name": "big"}).status_code == 201
            added = http.post(
                "/api/knowledge/big/documents", files={"file": ("big.md", big.encode())}
            ).json()["data"][0]
            document_id = added["document"]["id"]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                document = http.get(f"/api/knowledge/big/documents/{document_id}").json()
                if document["status"] == "embedding" and document["progress"] > 0:
                    break
                assert document["status"] != "indexed", "finished before it could be killed"
                time.sleep(0.05)
            else:
                raise AssertionError("ingestion never started embedding")
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
    finally:
        stop_server(server.process)
    restarted = start_server(home, ENCLAVE_ADMIN_KEY=ADMIN_KEY)
    try:
        with restarted.http() as http:
            document = wait_for(http, "big", document_id, ("indexed", "failed"))
            assert document["status"] == "indexed", document
            chunks = document["chunks"]
            listed: list[dict[str, Any]] = []
            offset = 0
            while page := http.get(
                f"/api/knowledge/big/documents/{document_id}/chunks",
                params={"offset": offset, "limit": 500},
            ).json()["data"]:
                listed += page
                offset += len(page)
            # Every chunk once: the half-made first attempt left nothing behind.
            assert [c["ordinal"] for c in listed] == list(range(chunks))
        assert "resuming ingestion job" in restarted.log.read_text()
    finally:
        stop_server(restarted.process)
