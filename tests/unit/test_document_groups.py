"""Documents restricted to groups, over every path that reads knowledge (issue #18).

One live Enclave (scripted chat model, bag-of-words embeddings, real SQLite,
real ingestion, real Streamable HTTP for ``/mcp``) holds a knowledge base with
a salary document restricted to ``hr-partners`` and an unrestricted pay policy.
People are keys with a user behind them: :func:`sign_in_people` wraps the key
store's ``authenticate``, the one seam every route (``/api``, ``/v1``,
``/mcp``) authenticates through, and gives each key's principal its user and
groups, as sign-in will. Each test checks what the user would see: the answer,
its citations, the listings, the 404s, and the model's own prompt.

``tests/integration/test_document_groups_postgres.py`` runs the same checks on
Postgres with pgvector.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from typer.testing import CliRunner

from enclave.app import create_app
from enclave.auth.principals import Principal
from enclave.cli.main import app as cli
from enclave.providers.base import GenerationRequest
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings
from enclave.testing.live_server import serving
from enclave.testing.scripted import Script, ScriptedProvider
from tests.conftest import ADMIN_KEY
from tests.unit.test_knowledge_api import KnowledgeApp, knowledge_settings

SALARIES = (
    "# Salaries 2026\n\nThe salary of a senior case officer is 5200 euro per month, before tax.\n"
)
PAY_POLICY = (
    "# Pay policy\n\nSalaries are paid on the 25th of each month. The salary scale of "
    "every officer is set in the collective agreement.\n"
)
QUESTION = "What is the salary of a senior case officer per month?"
SECRET = "5200"


@dataclass(frozen=True)
class Person:
    user_id: int | None
    name: str | None
    groups: frozenset[str] = frozenset()
    role: str = "member"


# Key name -> who is behind it; a key not listed has no user.
PEOPLE = {
    "alice": Person(1, "alice", frozenset({"hr-partners"})),
    "bob": Person(2, "bob", frozenset({"engineering"})),
    "carol": Person(3, "carol", frozenset({"engineering", "hr-partners"})),
    "dave": Person(4, "dave", frozenset({"engineering"}), role="builder"),
    "erin": Person(5, "erin", frozenset({"hr-partners"}), role="builder"),
}


def sign_in_people(services: Any, people: dict[str, Person]) -> None:
    """Give each listed key's principal its user, groups and role (the seam sign-in
    fills)."""
    authenticate: Callable[[str], Principal] = services.keys.authenticate

    def with_user(secret: str) -> Principal:
        principal = authenticate(secret)
        person = people.get(principal.key_name)
        if person is None:
            return principal
        return replace(
            principal,
            user_id=person.user_id,
            user_name=person.name,
            groups=person.groups,
            role=person.role,
        )

    services.keys.authenticate = with_user


def model_answer(request: GenerationRequest) -> str:
    """The scripted model repeats a salary only when a source in its prompt holds one."""
    prompt = "\n".join(message.content for message in request.messages)
    if SECRET in prompt:
        return f"A senior case officer earns {SECRET} euro per month [1]."
    return "Salaries are paid on the 25th of each month [1]."


@dataclass
class Base:
    """The live server, its keys and the documents of the ``hr`` base."""

    url: str
    http: httpx.Client
    kapp: KnowledgeApp
    provider: ScriptedProvider
    services: Any
    keys: dict[str, str]  # name -> secret
    people: dict[str, Person] = field(default_factory=dict)  # key name -> who signed in
    documents: dict[str, int] = field(default_factory=dict)  # name -> id
    chunks: dict[str, list[int]] = field(default_factory=dict)  # document name -> chunk ids

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def query(self, who: str, text: str = QUESTION, **body: Any) -> list[dict[str, Any]]:
        answer = self.http.post(
            "/api/knowledge/hr/query", json={"query": text, **body}, headers=self.auth(who)
        )
        assert answer.status_code == 200, answer.text
        return list(answer.json()["data"])

    def chat(
        self, who: str, model: str = "scripted", knowledge: list[str] | None = None, **enclave: Any
    ) -> dict[str, Any]:
        """``knowledge=None``: the ``hr`` base for a model; an app (``app/...``) has its own."""
        self.provider.requests.clear()
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": QUESTION}],
        }
        if not model.startswith("app/"):
            body["enclave"] = {"knowledge": knowledge or ["hr"], **enclave}
        answer = self.http.post("/v1/chat/completions", json=body, headers=self.auth(who))
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def prompts(self) -> str:
        return "\n".join(m.content for r in self.provider.requests for m in r.messages)

    def listed(self, who: str) -> dict[str, dict[str, Any]]:
        answer = self.http.get("/api/knowledge/hr/documents", headers=self.auth(who))
        assert answer.status_code == 200, answer.text
        return {document["name"]: document for document in answer.json()["data"]}

    def mcp(self, who: str, tool: str, arguments: dict[str, Any]) -> tuple[bool, Any]:
        """(is an error, the tool's JSON result) of one MCP tool call."""

        async def run() -> tuple[bool, Any]:
            transport = streamable_http_client(
                f"{self.url}/mcp",
                http_client=httpx2.AsyncClient(headers=self.auth(who), timeout=30),
            )
            async with Client(transport) as client:
                result = await client.call_tool(tool, arguments)
            return bool(result.is_error), json.loads(result.content[0].text)  # type: ignore[union-attr]

        return asyncio.run(run())


def make_keys(services: Any) -> dict[str, str]:
    """The admin key, one key per person, and a member's service key with no user."""
    keys = {"admin": ADMIN_KEY}
    for name in [*PEOPLE, "service"]:
        keys[name] = services.keys.create(name, role="member")[0]
    return keys


def stock(base: Base) -> None:
    """The ``hr`` base (the restricted salary document, the open pay policy), an app on
    it, and the ``prop`` base of the property test (eight open documents)."""
    base.kapp.create("hr")
    for name, text, groups in [
        ("salaries.md", SALARIES, "hr-partners"),
        ("pay-policy.md", PAY_POLICY, None),
    ]:
        fields = {"groups": groups} if groups else {}
        document = base.kapp.add("hr", name, text, **fields)
        assert document["status"] == "indexed", document
        assert document["groups"] == ([groups] if groups else [])
        base.documents[name] = document["id"]
        listed = base.http.get(
            f"/api/knowledge/hr/documents/{document['id']}/chunks", headers=base.auth("alice")
        )
        assert listed.status_code == 200, listed.text
        base.chunks[name] = [chunk["id"] for chunk in listed.json()["data"]]
    spec = {
        "apiVersion": "enclave/v1",
        "kind": "App",
        "metadata": {"name": "payroll", "description": "Answers pay questions."},
        "spec": {"model": "scripted", "knowledge": ["hr"]},
    }
    applied = base.http.put("/api/apps/payroll", json={"spec": spec}, headers=base.auth("admin"))
    assert applied.status_code in (200, 201), applied.text
    base.kapp.create("prop")
    for n in range(PROP_DOCUMENTS):
        document = base.kapp.add("prop", f"d{n}.md", prop_text(n))
        assert document["status"] == "indexed", document
        base.documents[f"d{n}.md"] = document["id"]
        base.chunks[f"d{n}.md"] = [0] * document["chunks"]  # only the count matters


PROP_DOCUMENTS = 8
PROP_GROUPS = ("a", "b", "c")


def codeword(n: int) -> str:
    return f"codeword{n}x"


def prop_text(n: int) -> str:
    return f"# Budget {n}\n\nThe travel budget of unit {n} is kept under {codeword(n)}.\n"


def live_base(settings: Settings) -> Iterator[Base]:
    provider = ScriptedProvider(script=Script(respond=model_answer))
    app = create_app(settings, registry=ModelRegistry([provider], default_model="scripted"))
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        services = app.state.services
        keys = make_keys(services)
        people = dict(PEOPLE)
        sign_in_people(services, people)
        kapp = KnowledgeApp(http, provider, settings.home)  # type: ignore[arg-type]
        base = Base(url, http, kapp, provider, services, keys, people=people)
        stock(base)
        yield base


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    yield from live_base(knowledge_settings(tmp_path_factory.mktemp("document-groups")))


# -- two people, one question ----------------------------------------------------------


@pytest.mark.parametrize("style", ["generative", "extractive"])
def test_the_hr_partner_gets_the_salary_cited_and_a_colleague_does_not(
    base: Base, style: str
) -> None:
    alice = base.chat("alice", answer_style=style)
    assert SECRET in alice["choices"][0]["message"]["content"]
    assert "salaries.md" in {c["document"]["name"] for c in alice["citations"]}
    for who in ("bob", "service", "admin"):
        answer = base.chat(who, answer_style=style)
        # Not in the answer, its citations, disagreement or clarifying options...
        assert SECRET not in json.dumps(answer), who
        assert "salaries.md" not in json.dumps(answer), who
        assert {c["document"]["name"] for c in answer.get("citations") or []} <= {"pay-policy.md"}
        # ...nor in what the model was shown.
        assert SECRET not in base.prompts(), who


def test_an_app_and_the_mcp_answer_tool_answer_each_person_from_what_they_may_read(
    base: Base,
) -> None:
    alice = base.chat("alice", model="app/payroll")
    assert SECRET in alice["choices"][0]["message"]["content"]
    bob = base.chat("bob", model="app/payroll")
    assert SECRET not in json.dumps(bob) and SECRET not in base.prompts()
    question = {"question": QUESTION, "knowledge_bases": ["hr"]}
    error, answer = base.mcp("alice", "answer", question)
    assert not error and SECRET in answer["answer"]
    error, answer = base.mcp("bob", "answer", question)
    assert not error and SECRET not in json.dumps(answer)


def test_outside_the_group_no_path_reaches_the_restricted_document(base: Base) -> None:
    salaries = base.documents["salaries.md"]
    restricted = base.chunks["salaries.md"]
    every_chunk = [c for name in ("salaries.md", "pay-policy.md") for c in base.chunks[name]]
    for who, member in [("alice", True), ("carol", True), ("bob", False), ("service", False)]:
        found = {p["document"]["name"] for p in base.query(who)}
        assert ("salaries.md" in found) is member, who
        assert ("salaries.md" in base.listed(who)) is member, who
        for path in [
            f"/api/knowledge/hr/documents/{salaries}",
            f"/api/knowledge/hr/documents/{salaries}/chunks",
        ]:
            answer = base.http.get(path, headers=base.auth(who))
            assert answer.status_code == (200 if member else 404), (who, path)
            if not member:  # the same answer as for a document that does not exist
                assert answer.json()["error"]["code"] == "document_not_found"
        error, result = base.mcp(who, "search", {"query": QUESTION, "knowledge_bases": ["hr"]})
        assert not error
        assert ("salaries.md" in {r["document"]["name"] for r in result["results"]}) is member
        error, result = base.mcp(who, "fetch", {"id": "kb://hr/salaries.md"})
        assert error is not member and (SECRET in json.dumps(result)) is member, who
        # Guessing chunk ids: every id up to past the last one.
        for chunk_id in range(1, max(every_chunk) + 3):
            error, result = base.mcp(who, "fetch", {"id": f"chunk:{chunk_id}"})
            if chunk_id in restricted:
                assert error is not member, (who, chunk_id)
                if not member:
                    assert result["code"] == "chunk_not_found"
            assert member or SECRET not in json.dumps(result), (who, chunk_id)


def test_an_admin_manages_the_groups_but_reads_only_as_a_member_would(base: Base) -> None:
    salaries = base.documents["salaries.md"]
    listed = base.listed("admin")
    assert listed["salaries.md"]["groups"] == ["hr-partners"]
    assert listed["pay-policy.md"]["groups"] == []
    assert "salaries.md" not in {p["document"]["name"] for p in base.query("admin")}
    chunks = base.http.get(
        f"/api/knowledge/hr/documents/{salaries}/chunks", headers=base.auth("admin")
    )
    assert chunks.status_code == 404
    path = f"/api/knowledge/hr/documents/{salaries}"
    try:
        moved = base.http.patch(path, json={"groups": ["engineering"]}, headers=base.auth("admin"))
        assert moved.status_code == 200 and moved.json()["groups"] == ["engineering"]
        assert "salaries.md" in {p["document"]["name"] for p in base.query("bob")}
        assert "salaries.md" not in {p["document"]["name"] for p in base.query("alice")}
        opened = base.http.patch(path, json={"groups": []}, headers=base.auth("admin"))
        assert opened.status_code == 200 and opened.json()["groups"] == []
        assert "salaries.md" in {p["document"]["name"] for p in base.query("service")}
    finally:
        restored = base.http.patch(
            path, json={"groups": ["hr-partners"]}, headers=base.auth("admin")
        )
        assert restored.status_code == 200
    assert "salaries.md" not in {p["document"]["name"] for p in base.query("service")}


def test_only_a_builder_sets_groups_and_no_outsider_replaces_a_restricted_document(
    base: Base,
) -> None:
    salaries = base.documents["salaries.md"]
    refused = base.http.post(
        "/api/knowledge/hr/documents",
        files={"file": ("notes.md", b"# Notes\n\nA note.\n")},
        data={"groups": "hr-partners"},
        headers=base.auth("alice"),
    )
    assert refused.status_code == 403
    assert "notes.md" not in base.listed("admin")
    patch = base.http.patch(
        f"/api/knowledge/hr/documents/{salaries}",
        json={"groups": []},
        headers=base.auth("alice"),
    )
    assert patch.status_code == 403
    assert base.listed("admin")["salaries.md"]["groups"] == ["hr-partners"]
    # Re-sending the same file without groups changes nothing, groups included.
    same = base.kapp.upload("hr", "salaries.md", SALARIES)
    assert same["outcome"] == "unchanged" and same["document"]["groups"] == ["hr-partners"]


def test_a_builder_outside_the_groups_cannot_lift_the_restriction(base: Base) -> None:
    """Builders manage documents they may not read, but only one in the groups (or an
    admin) changes the groups: otherwise dave could open the salaries and read them."""
    salaries = base.documents["salaries.md"]
    path = f"/api/knowledge/hr/documents/{salaries}"
    assert "salaries.md" in base.listed("dave")  # he manages it...
    for groups in ([], ["engineering"], ["engineering", "hr-partners"]):
        refused = base.http.patch(path, json={"groups": groups}, headers=base.auth("dave"))
        assert refused.status_code == 403, (groups, refused.text)
        assert "groups you are not in" in refused.json()["error"]["message"]
        resent = base.http.post(
            "/api/knowledge/hr/documents",
            files={"file": ("salaries.md", SALARIES.encode())},
            data={"groups": ",".join(groups)} if groups else {"groups": ""},
            headers=base.auth("dave"),
        )
        if groups:  # an empty form field means "no groups given"
            assert resent.status_code == 403, (groups, resent.text)
        assert base.listed("admin")["salaries.md"]["groups"] == ["hr-partners"]
        assert SECRET not in json.dumps(base.query("dave")), groups
    # ...and may send the same groups again (a sync job re-running is not a change).
    same = base.http.patch(path, json={"groups": ["hr-partners"]}, headers=base.auth("dave"))
    assert same.status_code == 200, same.text
    # A builder in the group may change them.
    try:
        widened = base.http.patch(
            path, json={"groups": ["hr-partners", "payroll"]}, headers=base.auth("erin")
        )
        assert widened.status_code == 200 and widened.json()["groups"] == [
            "hr-partners",
            "payroll",
        ]
    finally:
        restored = base.http.patch(
            path, json={"groups": ["hr-partners"]}, headers=base.auth("admin")
        )
        assert restored.status_code == 200


def test_a_base_counts_only_the_documents_each_person_may_see(base: Base) -> None:
    for who in ("alice", "bob", "service", "dave", "admin"):
        listed = base.listed(who)
        for answer in (
            base.http.get("/api/knowledge/hr", headers=base.auth(who)).json(),
            next(
                b
                for b in base.http.get("/api/knowledge", headers=base.auth(who)).json()["data"]
                if b["name"] == "hr"
            ),
        ):
            assert answer["documents"] == len(listed), (who, answer)
            assert answer["chunks"] == sum(d["chunks"] for d in listed.values()), who
    assert "salaries.md" not in base.listed("bob")
    assert "salaries.md" in base.listed("dave")  # a builder sees it listed, not its text


def test_the_cli_adds_restricted_documents_and_lists_their_groups(
    base: Base, tmp_path: Any
) -> None:
    path = tmp_path / "bonus.md"
    path.write_text("# Bonus\n\nThe bonus of a senior case officer is 900 euro a year.\n")
    runner = CliRunner()
    target = ["--url", base.url, "--key", ADMIN_KEY]
    added = runner.invoke(
        cli, ["knowledge", "add", "hr", str(path), "--groups", "hr-partners,payroll", *target]
    )
    assert added.exit_code == 0, added.output
    listed = runner.invoke(cli, ["knowledge", "ls", "hr", *target])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "bonus.md" in line)
    assert "hr-partners,payroll" in row
    as_json = runner.invoke(cli, ["knowledge", "ls", "hr", "--json", *target])
    bonus = next(d for d in json.loads(as_json.output) if d["name"] == "bonus.md")
    assert bonus["groups"] == ["hr-partners", "payroll"]
    assert "900" not in json.dumps(base.query("bob", "bonus of a senior case officer"))
    assert "900" in json.dumps(base.query("alice", "bonus of a senior case officer"))


# -- the property: whatever the groups, nothing restricted, and no place lost ----------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    restricted=st.lists(
        st.frozensets(st.sampled_from(PROP_GROUPS)),
        min_size=PROP_DOCUMENTS,
        max_size=PROP_DOCUMENTS,
    ),
    groups=st.frozensets(st.sampled_from([*PROP_GROUPS, "z"])),
    top_k=st.integers(1, PROP_DOCUMENTS),
)
def test_every_path_returns_only_readable_passages_and_loses_no_place(
    base: Base, restricted: list[frozenset[str]], groups: frozenset[str], top_k: int
) -> None:
    check_groups_property(base, restricted, groups, top_k)


def check_groups_property(
    base: Base, restricted: list[frozenset[str]], groups: frozenset[str], top_k: int
) -> None:
    names = [f"d{n}.md" for n in range(PROP_DOCUMENTS)]
    for name, document_groups in zip(names, restricted, strict=True):
        changed = base.http.patch(
            f"/api/knowledge/prop/documents/{base.documents[name]}",
            json={"groups": sorted(document_groups)},
            headers=base.auth("admin"),
        )
        assert changed.status_code == 200, changed.text
    base.people["prober"] = Person(10, "prober", groups)
    base.people["everyone"] = Person(11, "everyone", frozenset(PROP_GROUPS))
    for who in ("prober", "everyone"):
        if who not in base.keys:
            base.keys[who] = base.services.keys.create(who)[0]
    readable = [
        name
        for name, document_groups in zip(names, restricted, strict=True)
        if not document_groups or document_groups & groups
    ]
    unreadable = [codeword(names.index(n)) for n in names if n not in readable]
    question = "What is the travel budget of the unit?"
    body = {"top_k": top_k, "threshold": -1, "mode": "hybrid"}

    def documents_of(passages: list[dict[str, Any]]) -> list[str]:
        return [p["document"]["name"] for p in passages]

    # The query API: only readable documents, and as many as if the rest were not there.
    found = base.http.post(
        "/api/knowledge/prop/query", json={"query": question, **body}, headers=base.auth("prober")
    ).json()["data"]
    assert set(documents_of(found)) <= set(readable)
    readable_chunks = sum(len(base.chunks[name]) for name in readable)
    assert len(found) == min(top_k, readable_chunks)
    if readable:  # the same ranking as a search of only the readable documents
        alone = base.http.post(
            "/api/knowledge/prop/query",
            json={"query": question, **body, "filters": {"documents": readable}},
            headers=base.auth("everyone"),
        ).json()["data"]
        assert [p["chunk_id"] for p in found] == [p["chunk_id"] for p in alone]
    # MCP search.
    error, result = base.mcp(
        "prober", "search", {"query": question, "knowledge_bases": ["prop"], **body}
    )
    assert not error and set(documents_of(result["results"])) <= set(readable)
    assert len(result["results"]) == len(found)
    # Grounded chat: the answer, its citations and the model's prompt.
    base.provider.requests.clear()
    answer = base.http.post(
        "/v1/chat/completions",
        json={
            "model": "scripted",
            "messages": [{"role": "user", "content": question}],
            "enclave": {"knowledge": ["prop"], "top_k": top_k, "threshold": -1},
        },
        headers=base.auth("prober"),
    ).json()
    shown = json.dumps(answer) + base.prompts()
    assert not [word for word in unreadable if word in shown]
    # Listings and fetches by id.
    listed = base.http.get("/api/knowledge/prop/documents", headers=base.auth("prober")).json()
    assert {d["name"] for d in listed["data"]} == set(readable)
    for name in names:
        chunks = base.http.get(
            f"/api/knowledge/prop/documents/{base.documents[name]}/chunks",
            headers=base.auth("prober"),
        )
        assert chunks.status_code == (200 if name in readable else 404)
