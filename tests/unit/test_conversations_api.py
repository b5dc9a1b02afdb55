"""/api/conversations, in process: stored chats, their streams, Stop, apps and grounding."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient

from enclave.app import create_app
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings
from enclave.testing.scripted import Script, ScriptedProvider
from tests.conftest import ADMIN_KEY
from tests.unit.test_apps_api import HrApi, example_spec, respond


class Chats:
    def __init__(self, client: TestClient, provider: ScriptedProvider) -> None:
        self.client = client
        self.provider = provider

    def auth(self, key: str = ADMIN_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def create(self, key: str = ADMIN_KEY, **body: Any) -> dict[str, Any]:
        response = self.client.post("/api/conversations", json=body, headers=self.auth(key))
        assert response.status_code == 201, response.text
        return dict(response.json())

    def get(self, conversation_id: int, key: str = ADMIN_KEY) -> dict[str, Any]:
        response = self.client.get(f"/api/conversations/{conversation_id}", headers=self.auth(key))
        assert response.status_code == 200, response.text
        return dict(response.json())

    def send(
        self, conversation_id: int, key: str = ADMIN_KEY, **body: Any
    ) -> list[dict[str, Any] | str]:
        """Post a message and return the stream's events (parsed; ``[DONE]`` as a string)."""
        body.setdefault("model", "scripted")
        with self.client.stream(
            "POST",
            f"/api/conversations/{conversation_id}/messages",
            json=body,
            headers=self.auth(key),
        ) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        return [line if line == "[DONE]" else json.loads(line) for line in lines]

    def other_key(self) -> str:
        keys = self.client.app.state.services.keys  # type: ignore[attr-defined]
        secret, _ = keys.create("other")
        return str(secret)


def streamed_text(events: list[Any]) -> str:
    return "".join(
        (event["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for event in events
        if isinstance(event, dict) and "choices" in event
    )


@contextmanager
def build(settings: Settings, provider: ScriptedProvider) -> Iterator[Chats]:
    app = create_app(settings, registry=ModelRegistry([provider], default_model="scripted"))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Chats(client, provider)


@pytest.fixture
def chats(settings: Settings) -> Iterator[Chats]:
    with build(settings, ScriptedProvider()) as chats:
        yield chats


async def post_then_disconnect(
    app: Any, path: str, payload: dict[str, Any], after_deltas: int
) -> list[dict[str, Any]]:
    """POST like an ASGI server whose client goes away (the user pressed Stop) once
    ``after_deltas`` content chunks were sent. Returns the ASGI messages sent."""
    body = json.dumps(payload).encode()
    sent: list[dict[str, Any]] = []
    enough = anyio.Event()
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await enough.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        deltas = sum(m.get("body", b"").count(b'"delta":{"content"') for m in sent)
        if deltas >= after_deltas:
            enough.set()

    scope = {
        "type": "http",
        # uvicorn's spec version: Starlette then watches receive() for the disconnect.
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {ADMIN_KEY}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    with anyio.fail_after(20):
        await app(scope, receive, send)
    return sent


# -- conversations ---------------------------------------------------------------


def test_create_list_rename_and_delete(chats: Chats) -> None:
    first = chats.create()
    assert first["title"] is None and first["model"] is None
    second = chats.create(title="Budget", model="scripted")
    assert (second["title"], second["model"]) == ("Budget", "scripted")
    listed = chats.client.get("/api/conversations", headers=chats.auth()).json()["data"]
    assert [c["id"] for c in listed] == [second["id"], first["id"]]  # newest first

    renamed = chats.client.patch(
        f"/api/conversations/{first['id']}", json={"title": "  Leave  "}, headers=chats.auth()
    )
    assert renamed.status_code == 200
    assert (renamed.json()["title"], renamed.json()["model"]) == ("Leave", None)
    listed = chats.client.get("/api/conversations", headers=chats.auth()).json()["data"]
    assert listed[0]["id"] == first["id"]  # the rename made it the most recent

    deleted = chats.client.delete(f"/api/conversations/{first['id']}", headers=chats.auth())
    assert deleted.status_code == 204
    gone = chats.client.get(f"/api/conversations/{first['id']}", headers=chats.auth())
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"


def test_another_key_cannot_see_or_touch_a_conversation(chats: Chats) -> None:
    mine = chats.create(title="Mine")
    chats.send(mine["id"], content="secret plans")
    other = chats.other_key()
    base = f"/api/conversations/{mine['id']}"
    headers = chats.auth(other)
    assert chats.client.get("/api/conversations", headers=headers).json()["data"] == []
    assert chats.client.get(base, headers=headers).status_code == 404
    assert chats.client.patch(base, json={"title": "x"}, headers=headers).status_code == 404
    assert chats.client.delete(base, headers=headers).status_code == 404
    posted = chats.client.post(
        f"{base}/messages", json={"model": "scripted", "content": "hi"}, headers=headers
    )
    assert posted.status_code == 404
    kept = chats.get(mine["id"])
    assert kept["title"] == "Mine" and len(kept["messages"]) == 2


# -- messages --------------------------------------------------------------------


def test_a_message_streams_and_both_turns_are_stored(chats: Chats) -> None:
    conversation = chats.create()
    events = chats.send(conversation["id"], content="Hello there, how are you?")
    first = events[0]
    assert isinstance(first, dict) and first["object"] == "enclave.message"
    assert first["conversation_id"] == conversation["id"]
    assert first["title"] == "Hello there, how are you?"
    assert events[-1] == "[DONE]"
    assert streamed_text(events) == "Hello from the script."
    assert all("usage" not in e for e in events if isinstance(e, dict))

    stored = chats.get(conversation["id"])
    assert stored["title"] == "Hello there, how are you?" and stored["model"] == "scripted"
    user, assistant = stored["messages"]
    assert (user["id"], user["role"], user["content"]) == (
        first["user_message_id"],
        "user",
        "Hello there, how are you?",
    )
    assert (assistant["role"], assistant["content"]) == ("assistant", "Hello from the script.")
    assert assistant["extra"] == {"model": "scripted"}


def test_the_conversation_so_far_is_sent_and_the_title_kept(chats: Chats) -> None:
    conversation = chats.create()
    long = "Tell me about " + "the parental leave policy " * 5
    chats.send(conversation["id"], content=long)
    chats.send(conversation["id"], content="And annual leave?")
    sent = [(m.role, m.content) for m in chats.provider.requests[-1].messages]
    assert sent == [
        ("user", long),
        ("assistant", "Hello from the script."),
        ("user", "And annual leave?"),
    ]
    title = chats.get(conversation["id"])["title"]
    assert title == " ".join(long.split())[:60] and len(title) == 60


def test_a_bad_message_is_a_400_and_nothing_is_stored(chats: Chats) -> None:
    conversation = chats.create()
    url = f"/api/conversations/{conversation['id']}/messages"
    for body in (
        {"model": "scripted", "content": "  "},
        {"model": "scripted"},
        {"content": "hi"},
        {"model": "scripted", "confirm": "act_0123456789abcdef"},  # not an app
        {"model": "app/x", "content": "hi", "confirm": "act_0123456789abcdef"},
        {"model": "app/x", "confirm": "act_0123456789abcdef", "cancel": "act_0123456789abcdef"},
        {"model": "app/x", "confirm": "'; drop table"},
    ):
        response = chats.client.post(url, json=body, headers=chats.auth())
        assert response.status_code == 400, (body, response.text)
    assert chats.get(conversation["id"])["messages"] == []


def test_a_failing_model_stores_the_error_with_the_answer(chats: Chats) -> None:
    conversation = chats.create()
    events = chats.send(conversation["id"], content="hi", model="no-such-model")
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert errors and errors[0]["error"]["code"] == "model_not_found"
    assistant = chats.get(conversation["id"])["messages"][-1]
    assert assistant["content"] == ""
    assert assistant["extra"]["error"]["code"] == "model_not_found"
    assert "cancelled" not in assistant["extra"]


def test_a_stream_that_dies_keeps_the_partial_answer_and_the_error(settings: Settings) -> None:
    with build(settings, ScriptedProvider(script=Script(fail_after=2))) as chats:
        conversation = chats.create()
        events = chats.send(conversation["id"], content="hi")
        assert streamed_text(events) == "Hello from"
        assistant = chats.get(conversation["id"])["messages"][-1]
        assert assistant["content"] == "Hello from"
        assert "error" in assistant["extra"]


def test_stop_mid_stream_stores_the_partial_answer_as_cancelled(settings: Settings) -> None:
    words = [f" w{i}" for i in range(200)]
    with build(settings, ScriptedProvider(script=Script(words=words, delay=0.02))) as chats:
        conversation = chats.create()
        sent = chats.client.portal.call(  # type: ignore[union-attr]
            post_then_disconnect,
            chats.client.app,
            f"/api/conversations/{conversation['id']}/messages",
            {"model": "scripted", "content": "Count slowly."},
            5,
        )
        assert sent[0]["status"] == 200
        streamed = b"".join(m.get("body", b"") for m in sent).decode()
        assert "[DONE]" not in streamed
        assistant = chats.get(conversation["id"])["messages"][-1]
        assert assistant["role"] == "assistant"
        assert assistant["extra"]["cancelled"] is True
        assert assistant["content"].startswith(" w0 w1 w2 w3")
        assert len(assistant["content"].split()) < len(words)


# -- grounding and apps ------------------------------------------------------------


@pytest.fixture
def grounded(tmp_path: Path) -> Iterator[Chats]:
    settings = Settings(
        home=tmp_path / "home",
        admin_key=ADMIN_KEY,
        knowledge={"threshold": 0.2},
    )
    settings.knowledge.embedding_model = "scripted-words"
    with build(settings, ScriptedProvider()) as chats:
        yield chats


def test_knowledge_grounds_the_answer_and_the_citations_are_stored(grounded: Chats) -> None:
    client, auth = grounded.client, grounded.auth()
    assert client.post("/api/knowledge", json={"name": "hr"}, headers=auth).status_code == 201
    uploaded = client.post(
        "/api/knowledge/hr/documents",
        files={"file": ("leave.md", b"# Leave\n\nEmployees receive 480 days of parental leave.")},
        headers=auth,
    )
    document_id = uploaded.json()["data"][0]["document"]["id"]
    for _ in range(400):
        status = client.get(f"/api/knowledge/hr/documents/{document_id}", headers=auth).json()
        if status["status"] in ("indexed", "failed"):
            break
        time.sleep(0.05)
    assert status["status"] == "indexed", status

    conversation = grounded.create()
    events = grounded.send(
        conversation["id"], content="How many days of parental leave?", knowledge=["hr"]
    )
    final = [e for e in events if isinstance(e, dict) and e.get("choices") == []]
    assert final and final[-1]["citations"][0]["document"]["name"] == "leave.md"
    assistant = grounded.get(conversation["id"])["messages"][-1]
    assert assistant["extra"]["grounding"]["knowledge"] == ["hr"]
    assert assistant["extra"]["grounding"]["abstained"] is False
    assert assistant["extra"]["citations"][0]["document"]["name"] == "leave.md"
    prompt = "\n".join(m.content for m in grounded.provider.requests[-1].messages)
    assert "480 days" in prompt  # the passage reached the model

    unrelated = grounded.send(conversation["id"], content="Who won the cup?", knowledge=["hr"])
    assert "I can't find this" in streamed_text(unrelated)
    assistant = grounded.get(conversation["id"])["messages"][-1]
    assert assistant["extra"]["grounding"]["abstained"] is True


@pytest.fixture
def apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Chats, HrApi]]:
    monkeypatch.setenv("HR_TOKEN", "hr-secret-token-value")
    settings = Settings(
        home=tmp_path / "home",
        admin_key=ADMIN_KEY,
        apps={"secret_env": ["HR_TOKEN"], "tool_threshold": 0.45},
    )
    settings.knowledge.embedding_model = "scripted-words"
    api = HrApi()
    with build(settings, ScriptedProvider(script=Script(respond=respond))) as chats:
        services = chats.client.app.state.services  # type: ignore[attr-defined]
        services.app_runner.http = httpx.AsyncClient(transport=httpx.MockTransport(api))
        applied = chats.client.put(
            "/api/apps/hr-assistant", json={"spec": example_spec()}, headers=chats.auth()
        )
        assert applied.status_code == 200, applied.text
        yield chats, api


def test_an_app_action_waits_and_is_confirmed_in_the_conversation(
    apps: tuple[Chats, HrApi],
) -> None:
    chats, api = apps
    conversation = chats.create(model="app/hr-assistant")
    chats.send(
        conversation["id"], model="app/hr-assistant", content="Create a new vacancy titled Nurse."
    )
    asked = chats.get(conversation["id"])["messages"][-1]
    pending = asked["extra"]["app"]["pending_action"]
    assert pending["operation"] == "POST /vacancies"
    assert api.requests == []  # nothing runs before the user confirms

    events = chats.send(conversation["id"], model="app/hr-assistant", confirm=pending["id"])
    assert [r.method for r in api.requests] == ["POST"]
    final = [e for e in events if isinstance(e, dict) and e.get("choices") == []]
    assert final[-1]["app"]["tool_calls"][0]["status"] == 201
    messages = chats.get(conversation["id"])["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == "Confirmed."
    assert messages[2]["extra"] == {"confirm": pending["id"]}
    assert messages[3]["extra"]["app"]["tool_calls"][0]["status"] == 201
    assert chats.get(conversation["id"])["title"] == "Create a new vacancy titled Nurse."

    again = chats.send(conversation["id"], model="app/hr-assistant", confirm=pending["id"])
    assert any(isinstance(e, dict) and "error" in e for e in again)  # runs at most once
    assert len(api.requests) == 1


def test_an_app_action_can_be_cancelled_in_the_conversation(apps: tuple[Chats, HrApi]) -> None:
    chats, api = apps
    conversation = chats.create()
    chats.send(
        conversation["id"], model="app/hr-assistant", content="Create a new vacancy titled Nurse."
    )
    pending = chats.get(conversation["id"])["messages"][-1]["extra"]["app"]["pending_action"]
    events = chats.send(conversation["id"], model="app/hr-assistant", cancel=pending["id"])
    assert streamed_text(events).startswith("Cancelled")
    assert api.requests == []
    messages = chats.get(conversation["id"])["messages"]
    decision = messages[2]
    assert (decision["content"], decision["extra"]) == ("Cancelled.", {"cancel": pending["id"]})
    state = chats.client.get(f"/api/actions/{pending['id']}", headers=chats.auth()).json()
    assert state["status"] == "cancelled"


def test_typing_yes_in_the_conversation_does_not_run_an_app_action(
    apps: tuple[Chats, HrApi],
) -> None:
    chats, api = apps
    conversation = chats.create()
    chats.send(
        conversation["id"], model="app/hr-assistant", content="Create a new vacancy titled Nurse."
    )
    pending = chats.get(conversation["id"])["messages"][-1]["extra"]["app"]["pending_action"]
    events = chats.send(conversation["id"], model="app/hr-assistant", content="yes, confirm")
    assert streamed_text(events).startswith("Nothing was run")
    assert "press Confirm" in streamed_text(events)
    assert api.requests == []
    # The answer carries the action again, so the UI shows its Confirm button again.
    reminder = chats.get(conversation["id"])["messages"][-1]
    assert reminder["extra"]["app"]["pending_action"]["id"] == pending["id"]
    chats.send(conversation["id"], model="app/hr-assistant", confirm=pending["id"])
    assert [r.method for r in api.requests] == ["POST"]
