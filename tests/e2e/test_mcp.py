"""``/mcp`` end to end: ``enclave serve``, the real models, the official MCP client and the CLI.

A key created with ``enclave keys create --clearance internal`` connects like
a desktop assistant would; it gets the internal document and never the
confidential one, by search, fetch or answer.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.conftest import ENCLAVE, Server
from tests.e2e.test_knowledge import wait_for

pytestmark = pytest.mark.model

DOCUMENTS = {
    "travel.md": ("internal", "# Travel\n\nThe travel budget of the unit is 40000 euro a year.\n"),
    "salaries.md": ("confidential", "# Salaries\n\nThe salary budget of the unit is 12 million.\n"),
}


def test_a_desktop_client_gets_what_its_key_may_receive(server: Server) -> None:
    created = server.cli("keys", "create", "mcp-laptop", "--clearance", "internal")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    with server.http() as http:
        assert http.post("/api/knowledge", json={"name": "mcp-e2e"}).status_code == 201
        for name, (level, text) in DOCUMENTS.items():
            added = http.post(
                "/api/knowledge/mcp-e2e/documents",
                files={"file": (name, text.encode())},
                data={"classification": level},
            )
            assert added.status_code == 202, added.text
            wait_for(http, "mcp-e2e", added.json()["data"][0]["document"]["id"], ("indexed",))
        found = http.post(
            "/api/knowledge/mcp-e2e/query", json={"query": "budget of the unit", "top_k": 5}
        ).json()["data"]
    secret_chunk = next(p["chunk_id"] for p in found if p["classification"] == "confidential")

    async def session() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {secret}"}
        http = httpx2.AsyncClient(headers=headers, timeout=300)
        async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as mcp:
            return {
                "tools": [t.name for t in (await mcp.list_tools()).tools],
                "search": await mcp.call_tool(
                    "search", {"query": "budget of the unit", "knowledge_bases": ["mcp-e2e"]}
                ),
                "fetch": await mcp.call_tool("fetch", {"id": f"chunk:{secret_chunk}"}),
                "answer": await mcp.call_tool(
                    "answer",
                    {"question": "What is the budget of the unit?", "knowledge_bases": ["mcp-e2e"]},
                ),
            }

    got = asyncio.run(session())
    assert {"list_knowledge_bases", "search", "fetch", "answer"} <= set(got["tools"])
    results = got["search"].structured_content["results"]
    assert [r["document"]["name"] for r in results] == ["travel.md"]
    assert got["search"].structured_content["withheld"] == 1
    refusal = got["fetch"].structured_content["error"]
    assert got["fetch"].is_error and "receive clearance 'internal'" in refusal
    answer = got["answer"].structured_content
    assert not got["answer"].is_error, answer
    assert "12 million" not in answer["answer"]
    assert all(c["document"]["name"] == "travel.md" for c in answer["citations"])

    unauthenticated = httpx.post(
        f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    )
    assert unauthenticated.status_code == 401

    listing = subprocess.run(
        [ENCLAVE, "mcp", "clients", "--json", "--url", server.url, "--key", server.admin_key],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0, listing.stderr
    laptop = next(c for c in json.loads(listing.stdout) if c["key_name"] == "mcp-laptop")
    assert laptop["clearance"] == "internal" and laptop["denied"] >= 1
    assert {"search", "fetch", "answer"} <= set(laptop["tools"])
