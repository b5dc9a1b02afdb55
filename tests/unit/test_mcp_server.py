"""``/mcp`` with the official MCP Python client, over real Streamable HTTP on loopback.

One Enclave (scripted chat model, bag-of-words embeddings, real SQLite and
ingestion) serves a knowledge base with one document of each class. Keys with
different receive clearances connect with ``mcp.Client``; the tests check what
each one gets, and what an attacker does not (no key, another workspace's
key, guessed chunk ids, another workspace's resource URIs).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from typer.testing import CliRunner

from enclave.app import create_app
from enclave.cli.main import app as cli
from enclave.gateway.disclosure import Disclosure
from enclave.providers.registry import ModelRegistry
from enclave.testing.live_server import serving
from enclave.testing.scripted import ScriptedProvider
from tests.conftest import ADMIN_KEY
from tests.unit.test_knowledge_api import KnowledgeApp, knowledge_settings

CLASSES = ["public", "internal", "confidential", "secret"]
DOCUMENTS = {
    "public": "# Leave\n\nThe budget for parental leave is 480 days per child, for both.\n",
    "internal": "# Travel\n\nThe budget for team travel and parental leave cover is 40000 euro.\n",
    "confidential": "# Salaries\n\nThe budget for salaries and parental leave pay is 12 million.\n",
    "secret": "# Board\n\nThe budget cut for parental leave was decided by the board in March.\n",
}


TICKETS_COMMAND = [sys.executable, "-m", "enclave.testing.mcp_tickets", "--stdio"]
APPS: dict[str, dict[str, Any]] = {
    "helper": {},
    "vault": {"classification": "confidential"},
    "desk": {"mcps": [{"name": "tickets", "command": TICKETS_COMMAND}]},
}


@dataclass
class Live:
    url: str
    http: httpx.Client
    kapp: KnowledgeApp
    keys: dict[str, str]  # name -> secret
    chunks: dict[str, int]  # class -> a chunk id of that class's document
    services: Any

    def client(self, key: str | None) -> Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        transport = streamable_http_client(
            f"{self.url}/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=30)
        )
        return Client(transport)

    def set_clearance(self, name: str, clearance: str | None) -> None:
        key_id = next(k.id for k in self.services.keys.list() if k.name == name)
        self.services.keys.set_clearance(key_id, clearance)

    def audit(self) -> list[dict[str, Any]]:
        self.services.gateway.audit.flush(timeout=5)
        return list(self.services.audit_reader.entries(limit=500).entries)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("mcp-server")
    provider = ScriptedProvider()
    settings = knowledge_settings(tmp)
    settings.apps.mcp_commands = [TICKETS_COMMAND]
    app = create_app(settings, registry=ModelRegistry([provider], default_model="scripted"))
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        kapp = KnowledgeApp(http, provider, tmp)  # type: ignore[arg-type]
        kapp.create("policies", classification="public")
        chunks = {}
        for level, text in DOCUMENTS.items():
            document = kapp.add("policies", f"{level}.md", text, classification=level)
            assert document["status"] == "indexed", document
            listed = http.get(
                f"/api/knowledge/policies/documents/{document['id']}/chunks", headers=kapp.auth()
            ).json()["data"]
            chunks[level] = listed[0]["id"]
        for name, extra in APPS.items():
            spec = {
                "apiVersion": "enclave/v1",
                "kind": "App",
                "metadata": {"name": name, "description": f"The {name} assistant."},
                "spec": {"model": "scripted", **extra},
            }
            applied = http.put(f"/api/apps/{name}", json={"spec": spec}, headers=kapp.auth())
            assert applied.status_code in (200, 201), applied.text
        services = app.state.services
        keys = {
            "analyst": services.keys.create("analyst", clearance="internal")[0],
            "floor": services.keys.create("floor")[0],
            "other": services.keys.create("other", workspace="other")[0],
        }
        yield Live(url, http, kapp, keys, chunks, services)


def call(live: Live, key: str | None, tool: str, arguments: dict[str, Any]) -> Any:
    async def run() -> Any:
        async with live.client(key) as client:
            return await client.call_tool(tool, arguments)

    return asyncio.run(run())


def read_refusal(live: Live, key: str, uri: str) -> str:
    """The MCP error message of reading ``uri`` (the test fails if the read succeeds)."""

    async def read() -> str:
        async with live.client(key) as client:
            try:
                await client.read_resource(uri)
            except MCPError as exc:
                return exc.message
        raise AssertionError(f"{uri} was read")

    return asyncio.run(read())


# -- what a cleared key gets ------------------------------------------------------------


def test_the_official_client_lists_tools_searches_fetches_and_gets_an_answer(live: Live) -> None:
    async def session() -> dict[str, Any]:
        async with live.client(live.keys["analyst"]) as client:
            tools = await client.list_tools()
            search = await client.call_tool(
                "search", {"query": "budget parental leave", "top_k": 10}
            )
            hit = search.structured_content["results"][0]
            fetched = await client.call_tool("fetch", {"id": hit["id"]})
            answer = await client.call_tool(
                "answer", {"question": "What is the budget for parental leave?"}
            )
            bases = await client.call_tool("list_knowledge_bases", {})
            resources = await client.list_resources()
            document = await client.read_resource("kb://policies/internal.md")
            return {
                "tools": [tool.name for tool in tools.tools],
                "search": search.structured_content,
                "hit": hit,
                "fetched": fetched,
                "answer": answer,
                "bases": bases.structured_content,
                "resources": sorted(str(r.uri) for r in resources.resources),
                "document": document.contents[0].text,  # type: ignore[union-attr]
            }

    got = asyncio.run(session())
    assert {"list_knowledge_bases", "search", "fetch", "answer"} <= set(got["tools"])
    classes = {result["classification"] for result in got["search"]["results"]}
    assert classes and classes <= {"public", "internal"}
    assert got["search"]["withheld"] == 2  # the confidential and the secret document
    assert "above this key's receive clearance 'internal'" in got["search"]["note"]
    assert got["hit"]["quote"] and got["hit"]["document"]["name"].endswith(".md")
    assert not got["fetched"].is_error
    assert got["fetched"].structured_content["text"] == got["hit"]["quote"]
    answer = got["answer"].structured_content
    assert not got["answer"].is_error, answer
    assert isinstance(answer["answer"], str) and answer["answer"]
    assert isinstance(answer["citations"], list)
    assert answer["grounding"]["knowledge"] == ["policies"]
    assert "disagreement" in answer
    cited = {c["document"]["name"] for c in answer["citations"]}
    assert cited <= {"public.md", "internal.md"}
    assert got["bases"]["knowledge_bases"][0]["name"] == "policies"
    assert got["resources"] == ["kb://policies/internal.md", "kb://policies/public.md"]
    assert "40000 euro" in got["document"]


def test_a_key_without_a_clearance_gets_the_workspace_floor_on_mcp(live: Live) -> None:
    result = call(live, live.keys["floor"], "search", {"query": "budget parental leave"})
    assert {r["classification"] for r in result.structured_content["results"]} == {"public"}
    assert result.structured_content["withheld"] == 3


# -- refusals ---------------------------------------------------------------------------


def test_confidential_content_is_refused_with_the_reason_and_audited(live: Live) -> None:
    result = call(
        live, live.keys["analyst"], "fetch", {"id": f"chunk:{live.chunks['confidential']}"}
    )
    assert result.is_error
    message = result.structured_content["error"]
    assert "classified 'confidential'" in message and "receive clearance 'internal'" in message
    assert "12 million" not in str(result.content)

    refused = read_refusal(live, live.keys["analyst"], "kb://policies/confidential.md")
    assert "above this key's receive clearance" in refused
    denied = [
        e
        for e in live.audit()
        if e["error_code"] == "above_clearance" and e["endpoint"] == "/mcp fetch"
    ]
    # The refusal (classes and reason) and the tool call itself (outcome, latency).
    assert {e["classification"] for e in denied} >= {"confidential", ""}
    assert all(e["outcome"] == "denied" for e in denied)


def test_mcp_without_a_key_is_refused_and_audited(live: Live) -> None:
    response = live.http.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    bad = live.http.post("/mcp", json={}, headers={"Authorization": "Bearer ek-not-a-key-000000"})
    assert bad.status_code == 401
    with pytest.raises(Exception):  # noqa: B017 - the SDK's exception type is not the point
        call(live, None, "search", {"query": "budget"})
    refused = [e for e in live.audit() if e["endpoint"] == "/mcp" and e["status"] == 401]
    assert len(refused) >= 2


def test_the_web_session_cookie_does_not_open_mcp(live: Live) -> None:
    signed_in = httpx.Client(base_url=live.url)
    response = signed_in.post("/ui/login", data={"api_key": ADMIN_KEY}, follow_redirects=False)
    assert signed_in.cookies, response.text
    refused = signed_in.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert refused.status_code == 401


def test_another_workspace_key_sees_nothing_of_this_workspace(live: Live) -> None:
    other = live.keys["other"]
    search = call(live, other, "search", {"query": "budget", "knowledge_bases": ["policies"]})
    assert search.is_error and "no knowledge base 'policies'" in search.structured_content["error"]
    everything = call(live, other, "search", {"query": "budget parental leave"})
    assert everything.structured_content["results"] == []
    for chunk_id in [*live.chunks.values(), max(live.chunks.values()) + 1]:
        guessed = call(live, other, "fetch", {"id": f"chunk:{chunk_id}"})
        assert guessed.is_error
        # The same answer for another workspace's chunk as for one that does not exist.
        assert guessed.structured_content["error"] == (
            f"There is no chunk {chunk_id} in this workspace."
        )

    refused = read_refusal(live, other, "kb://policies/public.md")
    assert "no knowledge base 'policies'" in refused


def test_the_query_api_applies_a_keys_clearance(live: Live) -> None:
    def query(key: str) -> dict[str, Any]:
        response = live.http.post(
            "/api/knowledge/policies/query",
            json={"query": "budget parental leave", "top_k": 10},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    limited = query(live.keys["analyst"])
    assert {p["classification"] for p in limited["data"]} <= {"public", "internal"}
    assert limited["withheld"] == 2
    unlimited = query(ADMIN_KEY)  # no clearance: the query API is unchanged for it
    assert {p["classification"] for p in unlimited["data"]} == set(CLASSES)
    assert "withheld" not in unlimited


def test_an_admin_sets_a_keys_clearance(live: Live) -> None:
    key_id = next(k.id for k in live.services.keys.list() if k.name == "floor")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    bad = live.http.patch(f"/api/keys/{key_id}", json={"clearance": "top"}, headers=admin)
    assert bad.status_code == 400
    raised = live.http.patch(
        f"/api/keys/{key_id}", json={"clearance": "Confidential"}, headers=admin
    )
    assert raised.status_code == 200 and raised.json()["clearance"] == "confidential"
    try:
        result = call(live, live.keys["floor"], "search", {"query": "budget parental leave"})
        classes = {r["classification"] for r in result.structured_content["results"]}
        assert classes == {"public", "internal", "confidential"}
    finally:
        live.set_clearance("floor", None)


# -- the egress rule, over random clearances, queries and tools ----------------------------


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    clearance=st.sampled_from(CLASSES),
    words=st.lists(
        st.sampled_from(["budget", "parental", "leave", "salaries", "board", "travel", "euro"]),
        min_size=1,
        max_size=4,
    ),
    target=st.sampled_from(CLASSES),
)
def test_nothing_above_a_keys_clearance_ever_leaves(
    live: Live, clearance: str, words: list[str], target: str
) -> None:
    rank = {name: index for index, name in enumerate(CLASSES)}
    live.set_clearance("analyst", clearance)
    key = live.keys["analyst"]
    query = " ".join(words)
    above = [level for level in CLASSES if rank[level] > rank[clearance]]
    secrets = [DOCUMENTS[level].split("\n\n")[1].strip() for level in above]

    async def session() -> list[Any]:
        async with live.client(key) as client:
            return [
                await client.call_tool("search", {"query": query, "top_k": 10}),
                await client.call_tool("fetch", {"id": f"chunk:{live.chunks[target]}"}),
                await client.call_tool("fetch", {"id": f"kb://policies/{target}.md"}),
                await client.call_tool("answer", {"question": query}),
            ]

    try:
        search, chunk, document, answer = asyncio.run(session())
        for result in (search, chunk, document, answer):
            shown = str(result.content)
            assert not any(secret in shown for secret in secrets), (clearance, query)
        assert all(
            rank[r["classification"]] <= rank[clearance]
            for r in search.structured_content["results"]
        )
        for fetched in (chunk, document):
            assert fetched.is_error == (rank[target] > rank[clearance])
        if not answer.is_error:
            for citation in answer.structured_content["citations"]:
                level = citation["document"]["name"].removesuffix(".md")
                assert rank[level] <= rank[clearance]
        response = live.http.post(
            "/api/knowledge/policies/query",
            json={"query": query, "top_k": 10},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert all(rank[p["classification"]] <= rank[clearance] for p in response.json()["data"])
    finally:
        live.set_clearance("analyst", "internal")


# -- apps as tools, and the admin's view --------------------------------------------------------


def test_each_app_is_a_tool_and_answers_only_within_the_clearance(live: Live) -> None:
    async def session() -> tuple[list[str], Any, Any]:
        async with live.client(live.keys["analyst"]) as client:
            tools = [tool.name for tool in (await client.list_tools()).tools]
            helper = await client.call_tool("app_helper", {"message": "Hello there"})
            vault = await client.call_tool("app_vault", {"message": "Hello there"})
            return tools, helper, vault

    tools, helper, vault = asyncio.run(session())
    assert {"app_helper", "app_vault", "app_desk"} <= set(tools)
    assert not helper.is_error and helper.structured_content["answer"] == "Hello from the script."
    assert helper.structured_content["app"]["name"] == "helper"
    assert vault.is_error
    assert "app 'vault' is classified 'confidential'" in vault.structured_content["error"]

    async def from_other_workspace() -> str:
        async with live.client(live.keys["other"]) as client:
            try:
                await client.call_tool("app_helper", {"message": "Hello"})
            except MCPError as exc:
                return exc.message
        raise AssertionError("another workspace's app answered")

    assert asyncio.run(from_other_workspace()) == "Unknown tool 'app_helper'."


def test_the_cli_lists_mcp_servers_with_health_and_mcp_clients(live: Live) -> None:
    call(live, live.keys["analyst"], "search", {"query": "budget"})
    live.services.gateway.audit.flush(timeout=5)
    runner = CliRunner()
    servers = runner.invoke(cli, ["mcp", "list", "--json", "--url", live.url, "--key", ADMIN_KEY])
    assert servers.exit_code == 0, servers.output
    listed = json.loads(servers.output)
    assert listed == [
        {
            **listed[0],
            "app": "desk",
            "name": "tickets",
            "transport": "stdio",
            "status": "ok",
            "tools": ["search_tickets", "create_ticket"],
            "clearance": "public",
        }
    ]
    clients = runner.invoke(cli, ["mcp", "clients", "--url", live.url, "--key", ADMIN_KEY])
    assert clients.exit_code == 0, clients.output
    assert "analyst" in clients.output and "search" in clients.output
    data = live.http.get(
        "/api/admin/mcp/clients", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ).json()["data"]
    analyst = next(c for c in data if c["key_name"] == "analyst")
    assert analyst["calls"] >= 1 and analyst["tools"]["search"] >= 1
    assert analyst["clearance"] == "internal"
    refused = live.http.get(
        "/api/admin/mcp/clients", headers={"Authorization": f"Bearer {live.keys['analyst']}"}
    )
    assert refused.status_code == 403


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    clearance=st.sampled_from([*CLASSES, None]),
    levels=st.lists(st.sampled_from([*CLASSES, "unlisted"]), max_size=12),
)
def test_disclosure_keeps_exactly_what_the_clearance_allows(
    live: Live, clearance: str | None, levels: list[str]
) -> None:
    disclosure = Disclosure(live.services.gateway)
    principal = live.services.keys.authenticate(live.keys["analyst"])
    kept, withheld = disclosure.keep(
        principal, clearance, levels, lambda level: level, endpoint="/mcp test"
    )
    rank = {name: index for index, name in enumerate(CLASSES)}
    if clearance is None:  # no clearance: the query API's keys without one
        assert kept == levels and withheld.count == 0
        return
    assert kept == [lvl for lvl in levels if lvl in rank and rank[lvl] <= rank[clearance]]
    assert withheld.count == len(levels) - len(kept)  # an unlisted class is never kept


def test_a_handshake_era_client_is_served_too(live: Live) -> None:
    async def legacy() -> tuple[str, list[str]]:
        headers = {"Authorization": f"Bearer {live.keys['analyst']}"}
        transport = streamable_http_client(
            f"{live.url}/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=30)
        )
        async with Client(transport, mode="legacy") as client:
            tools = await client.list_tools()
            return client.protocol_version, [tool.name for tool in tools.tools]

    version, tools = asyncio.run(legacy())
    assert version == "2025-11-25" and "search" in tools


def test_a_revoked_key_is_refused_at_once(live: Live) -> None:
    secret, info = live.services.keys.create("short-lived", clearance="public")
    assert not call(live, secret, "list_knowledge_bases", {}).is_error
    revoked = live.http.delete(
        f"/api/keys/{info.id}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert revoked.status_code == 200
    response = live.http.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Authorization": f"Bearer {secret}", "Accept": "application/json"},
    )
    assert response.status_code == 401 and "Invalid API key" in response.text


def test_invalid_arguments_are_refused_before_anything_runs(live: Live) -> None:
    async def invalid() -> list[str]:
        messages = []
        async with live.client(live.keys["analyst"]) as client:
            for tool, arguments in [
                ("search", {"query": "budget", "top_k": "all"}),
                ("search", {"query": "budget", "top_k": 10_000}),
                ("fetch", {}),
                ("answer", {"question": "x" * 9000}),
            ]:
                try:
                    await client.call_tool(tool, arguments)
                except MCPError as exc:
                    messages.append(exc.message)
        return messages

    messages = asyncio.run(invalid())
    assert len(messages) == 4 and all(m.startswith("Invalid arguments for ") for m in messages)


# An npm client too, where installed (npm install @modelcontextprotocol/inspector; then
# MCP_INSPECTOR=node_modules/.bin/mcp-inspector): it is not a dependency of the project.
INSPECTOR = os.environ.get("MCP_INSPECTOR") or shutil.which("mcp-inspector")


@pytest.mark.skipif(not INSPECTOR, reason="the MCP Inspector (npm) is not installed")
def test_the_mcp_inspector_cli_lists_tools_and_searches(live: Live) -> None:
    assert INSPECTOR is not None
    key = live.keys["analyst"]

    def inspector(*args: str, key: str | None = key) -> subprocess.CompletedProcess[str]:
        header = ["--header", f"Authorization: Bearer {key}"] if key else []
        command = [INSPECTOR, "--cli", f"{live.url}/mcp", "--transport", "http", *header, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    listed = inspector("--method", "tools/list")
    assert listed.returncode == 0, listed.stderr
    assert {"search", "fetch", "answer"} <= {t["name"] for t in json.loads(listed.stdout)["tools"]}
    found = inspector(
        "--method", "tools/call", "--tool-name", "search", "--tool-arg", "query=budget leave"
    )
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)["structuredContent"]
    assert result["withheld"] == 2 and all(
        r["classification"] in ("public", "internal") for r in result["results"]
    )
    assert inspector("--method", "tools/list", key=None).returncode != 0
