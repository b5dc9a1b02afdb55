"""The effective class is the maximum of every input, and nothing lowers it.

Two levels of proof. The function: hypothesis draws arbitrary floors,
headers, app raises, knowledge classes and detector findings, and the class
must be their maximum, with one reason for each input. The whole HTTP path:
two mock upstreams, ``cloud`` cleared for public and ``onprem`` for
confidential, behind an alias that prefers ``cloud``; hypothesis draws the
header, the knowledge bases, streaming and the way in (``/v1`` or a UI
conversation), and the cloud mock's request log must never hold a byte of
confidential knowledge, nor anything of a request whose header is above
public.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from enclave.app import build_classifier, create_app
from enclave.providers.openai_upstream import OpenAIUpstream
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings
from enclave.testing.mock_upstream import MockUpstream, running_mock_upstream
from enclave.testing.scripted import ScriptedProvider
from tests.conftest import ADMIN_KEY

LEVELS = ["public", "internal", "confidential", "secret"]
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
# Text that carries a detector finding of a known class (iban: confidential by default).
IBAN_TEXT = "Pay to SE45 5000 0000 0583 9825 7466 today."

rank = LEVELS.index


def classifier():  # type: ignore[no-untyped-def]
    return build_classifier(Settings(home=Path("/nonexistent"), admin_key=ADMIN_KEY))


@hypothesis_settings(max_examples=400, deadline=None)
@given(
    floor=st.sampled_from(LEVELS),
    header=st.none() | st.sampled_from([*LEVELS, "SECRET", " Confidential "]),
    raised=st.lists(st.tuples(st.sampled_from(LEVELS), st.sampled_from(["app 'a'", "x"]))),
    knowledge=st.lists(st.tuples(st.sampled_from(LEVELS), st.sampled_from(["kb/a.md", "kb/b"]))),
    with_iban=st.booleans(),
)
def test_the_class_is_the_maximum_of_every_input(
    floor: str,
    header: str | None,
    raised: list[tuple[str, str]],
    knowledge: list[tuple[str, str]],
    with_iban: bool,
) -> None:
    decision = classifier().classify(
        workspace="w",
        floor=floor,
        header=header,
        texts=[IBAN_TEXT if with_iban else "hello"],
        knowledge=knowledge,
        raised=raised,
    )
    inputs = [floor, *(level for level, _ in raised), *(level for level, _ in knowledge)]
    if header is not None:
        inputs.append(header.strip().lower())
    if with_iban:
        inputs.append("confidential")
    assert decision.level == max(inputs, key=rank)
    # One reason per input, each naming its class: nothing left out, nothing invented.
    expected = 1 + len(raised) + len(knowledge) + (header is not None) + with_iban
    assert len(decision.reasons) == expected
    shown_raises = decision.reasons[1 + (header is not None) :][: len(raised)]
    assert list(shown_raises) == [f"{reason}: {level}" for level, reason in raised]


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    first=st.lists(st.tuples(st.sampled_from(LEVELS), st.just("k"))),
    extra=st.tuples(st.sampled_from(LEVELS), st.just("k")),
)
def test_adding_an_input_never_lowers_the_class(
    first: list[tuple[str, str]], extra: tuple[str, str]
) -> None:
    check = classifier()
    before = check.classify(workspace="w", floor="public", header=None, texts=[], knowledge=first)
    after = check.classify(
        workspace="w", floor="public", header=None, texts=[], knowledge=[*first, extra]
    )
    assert rank(after.level) >= rank(before.level)
    assert rank(after.level) >= rank(extra[0])


def test_an_unknown_class_from_a_source_fails_closed() -> None:
    with pytest.raises(Exception, match="Unknown classification 'top-secret'"):
        classifier().classify(
            workspace="w",
            floor="public",
            header=None,
            texts=[],
            knowledge=[("top-secret", "kb/x.md")],
        )


# -- end to end -----------------------------------------------------------------------------

# Answerable (a date for a "when" question), so grounding goes to the model and routing.
TOPIC = "The harbour crane maintenance schedule has the crane inspection on 14 March 2027."
DOCUMENTS = {
    # base -> (base class, [(document name, document class or None, marker)])
    "pub": ("public", [("pub.md", None, "MARKPUBA")]),
    "conf": ("confidential", [("conf.md", None, "MARKCONFB")]),
    "mixed": (
        "public",
        [("open.md", None, "MARKPUBC"), ("closed.md", "confidential", "MARKCONFD")],
    ),
}
CONFIDENTIAL_MARKERS = ("MARKCONFB", "MARKCONFD")


@pytest.fixture(scope="module")
def mocks() -> Iterator[dict[str, MockUpstream]]:
    with running_mock_upstream(chunks=3) as cloud, running_mock_upstream(chunks=3) as onprem:
        yield {"cloud": cloud, "onprem": onprem}


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, mocks: dict[str, MockUpstream]
) -> Iterator[TestClient]:
    providers = [
        {
            "name": name,
            "type": "openai",
            "base_url": mocks[name].url,
            "clearance": clearance,
            "models": ["m"],
        }
        for name, clearance in (("cloud", "public"), ("onprem", "confidential"))
    ]
    settings = Settings.model_validate(
        {
            "home": tmp_path_factory.mktemp("monotone") / "home",
            "admin_key": ADMIN_KEY,
            "providers": providers,
            "aliases": {"best": ["cloud/m", "onprem/m"]},
            "default_model": "best",
            "knowledge": {"threshold": 0.0},
        }
    )
    settings.knowledge.embedding_model = "scripted-words"  # served by the scripted provider
    upstreams: list[Any] = [OpenAIUpstream(config) for config in settings.providers]
    registry = ModelRegistry([ScriptedProvider(), *upstreams], default_model="best")
    app = create_app(settings, registry=registry)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        for base, (level, documents) in DOCUMENTS.items():
            created = test_client.post(
                "/api/knowledge", json={"name": base, "classification": level}, headers=AUTH
            )
            assert created.status_code == 201, created.text
            for name, document_level, marker in documents:
                fields = {"classification": document_level} if document_level else {}
                uploaded = test_client.post(
                    f"/api/knowledge/{base}/documents",
                    files={"file": (name, f"# Cranes\n\n{TOPIC} Code {marker}.\n".encode())},
                    data=fields,
                    headers=AUTH,
                )
                assert uploaded.status_code == 202, uploaded.text
                wait_indexed(test_client, base, uploaded.json()["data"][0]["document"]["id"])
        yield test_client


def wait_indexed(client: TestClient, base: str, document_id: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        document = client.get(f"/api/knowledge/{base}/documents/{document_id}", headers=AUTH)
        if document.json()["status"] == "indexed":
            return
        time.sleep(0.05)
    raise AssertionError(f"{base}/{document_id} was not indexed")


def ask(
    client: TestClient, header: str | None, bases: list[str], stream: bool, via_ui: bool
) -> tuple[int, str | None]:
    """Ask about the topic; return (status, X-Enclave-Classification)."""
    headers = {**AUTH, **({"X-Enclave-Classification": header} if header else {})}
    question = "When is the harbour crane inspection on the maintenance schedule?"
    if via_ui:
        conversation = client.post("/api/conversations", json={}, headers=AUTH).json()
        body = {"model": "best", "content": question, "knowledge": bases}
        with client.stream(
            "POST", f"/api/conversations/{conversation['id']}/messages", json=body, headers=headers
        ) as response:
            response.read()
            return response.status_code, response.headers.get("x-enclave-classification")
    payload: dict[str, Any] = {
        "model": "best",
        "messages": [{"role": "user", "content": question}],
        "stream": stream,
    }
    if bases:
        payload["enclave"] = {"knowledge": bases}
    response = client.post("/v1/chat/completions", json=payload, headers=headers)
    return response.status_code, response.headers.get("x-enclave-classification")


@hypothesis_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    header=st.none() | st.sampled_from(LEVELS),
    bases=st.lists(st.sampled_from(sorted(DOCUMENTS)), unique=True),
    stream=st.booleans(),
    via_ui=st.booleans(),
)
def test_nothing_above_public_reaches_the_public_upstream(
    client: TestClient,
    mocks: dict[str, MockUpstream],
    header: str | None,
    bases: list[str],
    stream: bool,
    via_ui: bool,
) -> None:
    for mock in mocks.values():
        mock.reset()
    status, level = ask(client, header, bases, stream, via_ui)
    seen = json.dumps([request.body for request in mocks["cloud"].requests])
    for marker in CONFIDENTIAL_MARKERS:
        assert marker not in seen, f"confidential passage {marker} reached the public upstream"
    if header is not None and rank(header) > 0:
        assert not mocks["cloud"].requests, "a raised request reached the public upstream"
    if status == 200 and level is not None:
        assert rank(level) >= rank(header or "public")
        if "conf" in bases:
            assert level in ("confidential", "secret")
    if header == "secret":
        assert not mocks["onprem"].requests, "nothing is cleared for secret"


@pytest.mark.parametrize(
    ("header", "bases"),
    [
        ("secret", ["pub"]),  # the header together with a public base
        (None, ["conf", "pub"]),  # a confidential base together with a public one
        (None, ["pub", "conf"]),
        (None, ["mixed"]),  # a confidential document inside a public base
    ],
)
def test_each_reported_combination_stays_off_the_public_upstream(
    client: TestClient, mocks: dict[str, MockUpstream], header: str | None, bases: list[str]
) -> None:
    for mock in mocks.values():
        mock.reset()
    status, level = ask(client, header, bases, stream=False, via_ui=False)
    if header == "secret":
        assert status == 403 and level == "secret"
        assert not mocks["cloud"].requests and not mocks["onprem"].requests
        return
    assert status == 200
    assert level == "confidential"
    assert not mocks["cloud"].requests
    assert mocks["onprem"].requests
